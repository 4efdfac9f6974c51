"""The commit policy of an open utterance: LocalAgreement-2, as whisper_streaming uses it.

Each re-decode of an utterance's audio so far gives a hypothesis: its words. Words that
two consecutive hypotheses agree on, from the start of what is not yet committed, are
committed, except the last `hold_back` of them: the last agreed word is the one nearest
to where the two hypotheses part, and often a word that the audio so far cuts in half,
which two decodes may mishear alike ("chairs" for "jazz"). Holding back one word took
the finals' WER on tiny.en from 13.3/11.9/12.7% to 13.1/11.0/12.2% on the live
benchmark's clip sets, and from 27.6/31.6% to 26.2/30.7% on two sets of held-out
phrases (scripts/live_wer.py); two words did better on the first sets only.
Contract of `LocalAgreement`:
- `committed` only grows: a committed word is never revised or removed within the
  utterance, whatever later decodes say;
- `update(words)` returns the text to show now: the committed words, then the newest
  hypothesis's words after them (tentative: they may still change);
- `finish(words)` returns the final words: the committed ones, then the last (full)
  decode's words after them. A final is therefore consistent with every partial's
  committed part.

Words are compared after lower-casing and dropping punctuation ("fox," agrees with "Fox.").
A hypothesis whose start differs from the committed words (Whisper changed its mind about
an earlier word) is aligned to them by the longest matching blocks (difflib), so its words
after the committed ones are still found.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence


def normalize(word: str) -> str:
    return "".join(ch for ch in word.lower() if ch.isalnum() or ch == "'")


def _keys(words: Sequence[str]) -> list[str]:
    return [normalize(w) for w in words]


def after_prefix(prefix: Sequence[str], words: Sequence[str]) -> list[str]:
    """The words of `words` that come after the part matching `prefix`."""
    want, have = _keys(prefix), _keys(words)
    if have[: len(want)] == want:
        return list(words[len(want) :])
    matcher = difflib.SequenceMatcher(None, want, have, autojunk=False)
    blocks = [b for b in matcher.get_matching_blocks() if b.size]
    if not blocks:
        return list(words[len(want) :])
    last = blocks[-1]
    # The committed words after the last matching block have counterparts (changed words)
    # in `words` right after it: skip as many.
    unmatched_tail = len(want) - (last.a + last.size)
    return list(words[last.b + last.size + unmatched_tail :])


class LocalAgreement:
    def __init__(self, hold_back: int = 1) -> None:
        if hold_back < 0:
            raise ValueError(f"hold_back must not be negative, got {hold_back}")
        self.hold_back = hold_back
        self.committed: list[str] = []
        self._previous: list[str] = []  # the last hypothesis's words after `committed`

    def update(self, words: Sequence[str]) -> list[str]:
        """Take one hypothesis of the whole utterance so far; return the words to show."""
        tail = after_prefix(self.committed, words)
        agreed = 0
        for old, new in zip(_keys(self._previous), _keys(tail), strict=False):
            if old != new:
                break
            agreed += 1
        agreed = max(0, agreed - self.hold_back)
        self.committed += tail[:agreed]
        self._previous = tail[agreed:]
        return self.committed + self._previous

    def finish(self, words: Sequence[str]) -> list[str]:
        """The final words, from the last decode of the whole utterance."""
        return self.committed + after_prefix(self.committed, words)


#: Below this similarity no prefix of a decode's words is taken for the context.
MIN_CONTEXT_SIMILARITY = 0.5


def cut_context(context: Sequence[str], words: Sequence[str]) -> list[str] | None:
    """The words of `words` (a decode of context audio, then new audio) that come after its
    transcription of the context, whose words were `context`; None when no prefix of
    `words` reads like the context.

    Whisper may hear the context a little differently this time ("Council that" for
    "Console mat"), so the cut is where the words so far are most like the context,
    compared character by character. When no prefix is at least `MIN_CONTEXT_SIMILARITY`
    alike, Whisper either left the context out or heard it as something else altogether
    ("Soundboard." for "How did it go?"), and which of the words are the new audio's
    cannot be told: the caller decodes again without context, or sets the decode aside.
    """
    want = " ".join(_keys(context))
    have = _keys(words)
    best_cut, best_ratio = 0, MIN_CONTEXT_SIMILARITY
    matcher = difflib.SequenceMatcher(None, autojunk=False)
    matcher.set_seq2(want)
    for cut in range(1, len(words) + 1):
        matcher.set_seq1(" ".join(have[:cut]))
        ratio = matcher.ratio()
        if ratio > best_ratio:
            best_cut, best_ratio = cut, ratio
    return list(words[best_cut:]) if best_cut else None


def repeats_itself(words: Sequence[str], shortest: int = 2) -> bool:
    """Whether some run of at least `shortest` words comes twice in a row ("open the door
    open the door"): how a decoder loop looks, and rare in speech."""
    keys = _keys(words)
    for n in range(shortest, len(keys) // 2 + 1):
        for start in range(len(keys) - 2 * n + 1):
            if keys[start:start + n] == keys[start + n:start + 2 * n]:
                return True
    return False
