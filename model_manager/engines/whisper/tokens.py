"""A Whisper vocabulary's special tokens, decoder prompts and text, on faster-whisper's
`Tokenizer` (special ids, encoding, decoding, word splitting), so the engines read and write
tokens as faster-whisper does.

What faster-whisper's Tokenizer does not know is which languages one model's vocabulary has:
its list is fixed, and older vocabularies spell Hebrew <|iw|>, a code it refuses. So the
languages, and the language token of a prompt, come from the vocabulary itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import tokenizers
from faster_whisper.tokenizer import Tokenizer

_LANGUAGE_TOKEN = re.compile(r"^<\|([a-z]{2,3})\|>$")
_SPECIAL = ("<|startoftranscript|>", "<|endoftext|>", "<|notimestamps|>", "<|transcribe|>", "<|translate|>",
            "<|startofprev|>")


def languages_of(vocab: Mapping[str, int], sot: int, translate: int) -> dict[str, int]:
    """language code -> token id, in id order: the `<|xx|>` tokens between <|startoftranscript|>
    and <|translate|>, which is where every Whisper vocabulary puts them (large-v3 adds "yue")."""
    found = {m.group(1): i for t, i in vocab.items()
             if (m := _LANGUAGE_TOKEN.match(t)) and sot < i < translate}
    return dict(sorted(found.items(), key=lambda kv: kv[1]))


class WhisperTokens:
    """The special token ids of a Whisper tokenizer, the languages the model knows, decoder
    prompts, and text <-> ids. `multilingual`: the model was trained with language and task
    tokens (English-only models were not)."""

    def __init__(self, tokenizer: tokenizers.Tokenizer, multilingual: bool) -> None:
        missing = [t for t in _SPECIAL if tokenizer.token_to_id(t) is None]
        if missing:
            raise ValueError(f"not a Whisper vocabulary: no {missing[0]} token")
        self.tokenizer = tokenizer
        self.multilingual = multilingual
        # Without a language and task: the ids every task shares.
        self._plain = Tokenizer(tokenizer, multilingual=False)
        self.sot: int = self._plain.sot
        self.eot: int = self._plain.eot
        self.no_timestamps: int = self._plain.no_timestamps
        self.transcribe: int = self._plain.transcribe
        self.translate: int = self._plain.translate
        self.sot_prev: int = self._plain.sot_prev
        #: language code -> token id, e.g. {"en": 50259, ...}; English-only vocabularies have
        #: the tokens too, though their models never saw them.
        self.languages: Mapping[str, int] = languages_of(tokenizer.get_vocab(with_added_tokens=True),
                                                         self.sot, self.translate)
        self._tasks: dict[tuple[str, str], Tokenizer] = {}

    def for_task(self, language: str, task: str) -> Tokenizer:
        """faster-whisper's Tokenizer for one language and task (word splitting, sot_sequence);
        English-only models take neither. ValueError for a language faster-whisper does not know."""
        if not self.multilingual:
            return self._plain
        key = (language, task)
        if key not in self._tasks:
            self._tasks[key] = Tokenizer(self.tokenizer, multilingual=True, task=task, language=language)
        return self._tasks[key]

    def prompt(self, language: str, task: str) -> list[int]:
        """Decoder prompt ids: <|startoftranscript|> [<|lang|> <|task|>] <|notimestamps|>, that is
        faster-whisper's sot_sequence and <|notimestamps|>, for any language of the vocabulary.
        English-only models were trained without the language and task tokens."""
        if not self.multilingual:
            return [self.sot, self.no_timestamps]
        task_id = self.translate if task == "translate" else self.transcribe
        return [self.sot, self.languages[language], task_id, self.no_timestamps]

    def text_ids(self, ids: Sequence[int]) -> list[int]:
        """Drop special and timestamp tokens (every id from <|endoftext|> up)."""
        return [i for i in ids if i < self.eot]

    def encode(self, text: str) -> list[int]:
        """Text -> token ids, without special tokens."""
        return self._plain.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids` (special and timestamp tokens dropped), stripped."""
        return self._plain.decode(list(ids)).strip()

    def language_of(self, token: str) -> str:
        """'<|de|>' -> 'de' (CTranslate2's detect_language returns token strings)."""
        m = _LANGUAGE_TOKEN.match(token)
        if m is None:
            raise ValueError(f"not a language token: {token!r}")
        return m.group(1)
