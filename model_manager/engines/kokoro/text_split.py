"""Split long text into pieces that each fit Kokoro's context, and parse explicit pauses.

Kokoro reads at most 510 phoneme tokens at once. Other TTS servers cut the phoneme string at
510 and silently drop the rest; here nothing is ever dropped. Text is cut at the most natural
boundary that makes every piece fit, in this order:

1. explicit pause markers (always a cut, with real silence in between);
2. sentence ends: ``.``, ``!``, ``?``, ``…`` (and CJK 。！？) followed by space, and blank lines.
   A single newline counts as a space, so hard-wrapped paragraphs are not chopped. A period
   after a common abbreviation ("Dr.", "e.g.") or an initial ("J. Smith"), or followed by a
   lower-case word, does not end a sentence;
3. clause breaks: after ``,`` ``;`` ``:`` and around dashes;
4. spaces between words, when a clause alone is too long;
5. inside a word, by characters, as the last resort (a 2,000-character URL still gets read).

Consecutive sentences are then packed greedily into pieces up to a target size, so that a
paragraph is spoken with the model's own sentence prosody rather than as isolated sentences.

Pause syntax: ``[pause:0.5]`` in the text makes 0.5 s of silence at that point. The value is
in seconds, or in milliseconds with an ``ms`` suffix; an ``s`` suffix is allowed; case and
spaces inside the brackets do not matter: ``[pause:1]``, ``[Pause: 0.25s]``, ``[pause:300ms]``.
Values run from 0 to `MAX_PAUSE_SECONDS`. A marker with any other value raises ValueError,
rather than being read aloud as "pause abc".

Everything here is a pure function. Sizes come from a caller-supplied ``measure(text) -> int``
(the engine passes the phoneme-token count; tests can pass ``len``), which must be close to
additive: the size of "a b" is about size("a") + 1 + size("b"). Packing relies on that to
estimate, and re-measures every packed piece exactly so that the limit holds regardless.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Measure = Callable[[str], int]

MAX_PAUSE_SECONDS = 10.0


@dataclass(frozen=True)
class Pause:
    """Silence of `seconds` between two pieces of speech."""

    seconds: float


Segment = str | Pause

_PAUSE_MARKER = re.compile(r"\[\s*pause\s*:([^\]]*)\]", re.IGNORECASE)
_INCOMPLETE_MARKER = re.compile(r"\[[^\]]*$")  # the start of a marker, its "]" yet to come
_PAUSE_VALUE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s)?\s*$", re.IGNORECASE)
# Sentence-final punctuation, optional closing quotes/brackets, then whitespace or the end.
_SENTENCE_END = re.compile(r"[.!?…。！？]+[\"'”’»)\]]*(?=\s|$)")
_CJK_SENTENCE_END = re.compile(r"[。！？]")
_PARAGRAPH = re.compile(r"\n[^\S\n]*\n\s*")
# After , ; : and dashes (the punctuation stays with the left piece, where it makes a pause).
_CLAUSE_BREAK = re.compile(r"(?<=[,;:—–])\s+|(?<=[—–])(?=\S)|(?<=\s-)\s+|(?<=\s--)\s+")
# Lower-case words that take a period without ending a sentence.
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc e.g i.e cf fig approx inc ltd co corp mt no vol dept est"
    " jan feb mar apr jun jul aug sep sept oct nov dec".split())


def parse_pause(value: str) -> Pause:
    """'0.5', '0.5s' or '500ms' -> Pause(0.5). ValueError for anything else or out of range."""
    match = _PAUSE_VALUE.match(value)
    if not match:
        raise ValueError(f"invalid pause marker value {value.strip()!r}; "
                         "use e.g. [pause:0.5] or [pause:500ms]")
    seconds = float(match.group(1)) / (1000.0 if (match.group(2) or "").lower() == "ms" else 1.0)
    if not (math.isfinite(seconds) and 0.0 <= seconds <= MAX_PAUSE_SECONDS):
        raise ValueError(f"pause of {seconds:g} s is out of range [0, {MAX_PAUSE_SECONDS:g}]")
    return Pause(seconds)


def format_pause(pause: Pause) -> str:
    """The marker that `parse_pauses` reads back as `pause`."""
    return f"[pause:{pause.seconds:g}]"


def parse_pauses(text: str) -> list[Segment]:
    """Text runs and Pauses in order. Whitespace-only runs are dropped; adjacent pauses add up.

    Raises ValueError for a malformed or out-of-range marker.
    """
    out: list[Segment] = []
    position = 0
    for match in _PAUSE_MARKER.finditer(text):
        _append_text(out, text[position:match.start()])
        pause = parse_pause(match.group(1))
        if out and isinstance(out[-1], Pause):
            out[-1] = Pause(min(out[-1].seconds + pause.seconds, MAX_PAUSE_SECONDS))
        else:
            out.append(pause)
        position = match.end()
    _append_text(out, text[position:])
    return out


def _append_text(out: list[Segment], run: str) -> None:
    if run.strip():
        out.append(run)


def spoken_text(text: str) -> str:
    """`text` without its pause markers (for size estimates). Raises on a malformed marker."""
    return " ".join(s for s in parse_pauses(text) if isinstance(s, str))


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`, stripped, whitespace collapsed, punctuation kept with each."""
    sentences: list[str] = []
    for paragraph in _PARAGRAPH.split(text):
        paragraph = " ".join(paragraph.split())
        start = 0
        for match in _SENTENCE_END.finditer(paragraph):
            if _ends_sentence(paragraph, match):
                _append_stripped(sentences, paragraph[start:match.end()])
                start = match.end()
        _append_stripped(sentences, paragraph[start:])
    return _merge_unspoken(_split_cjk(sentences))


def _merge_unspoken(sentences: list[str]) -> list[str]:
    """A "sentence" with no letters or digits (a stray "!!" or "。") joins the one before it."""
    out: list[str] = []
    for sentence in sentences:
        if out and not any(c.isalnum() for c in sentence):
            out[-1] = f"{out[-1]} {sentence}"
        else:
            out.append(sentence)
    return out


def _ends_sentence(text: str, match: re.Match[str]) -> bool:
    if match.group(0).rstrip("\"'”’»)]") != ".":
        return True  # "!", "?", "...", "?!": always a boundary
    word = text[:match.start()].rsplit(" ", 1)[-1].lstrip("\"'“‘«([").lower()
    if word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
        return False
    following = text[match.end():].lstrip()
    return not (following[:1].islower())


def _split_cjk(sentences: list[str]) -> list[str]:
    """CJK full stops end a sentence without needing a following space."""
    out: list[str] = []
    for sentence in sentences:
        start = 0
        for match in _CJK_SENTENCE_END.finditer(sentence):
            _append_stripped(out, sentence[start:match.end()])
            start = match.end()
        _append_stripped(out, sentence[start:])
    return out


def _append_stripped(out: list[str], piece: str) -> None:
    piece = piece.strip()
    if piece:
        out.append(piece)


def split_clauses(text: str) -> list[str]:
    """Clauses of one sentence: cut after , ; : and around dashes; punctuation stays left."""
    return [c.strip() for c in _CLAUSE_BREAK.split(text) if c and c.strip()]


def split_hard(word: str, measure: Measure, limit: int) -> list[str]:
    """Cut one overlong word into the longest prefixes that fit (binary search per piece)."""
    out: list[str] = []
    rest = word
    while rest:
        if measure(rest) <= limit:
            out.append(rest)
            break
        low, high = 1, len(rest)  # the longest prefix length in [low, high) that fits
        if measure(rest[:1]) > limit:
            raise ValueError(f"a single character {rest[:1]!r} is over the limit of {limit}")
        while high - low > 1:
            mid = (low + high) // 2
            if measure(rest[:mid]) <= limit:
                low = mid
            else:
                high = mid
        out.append(rest[:low])
        rest = rest[low:]
    return out


def fit(text: str, measure: Measure, limit: int) -> list[str]:
    """`text` as pieces of size <= limit, cut at the coarsest boundary that works
    (clauses, then words, then characters). Joining the pieces with spaces gives back
    the text, up to whitespace. Nothing is ever dropped."""
    text = text.strip()
    if not text:
        return []
    if measure(text) <= limit:
        return [text]
    for splitter in (split_clauses, str.split):
        parts = splitter(text)
        if len(parts) > 1:
            fitted = [piece for part in parts for piece in fit(part, measure, limit)]
            return pack(fitted, measure, limit)
    return split_hard(text, measure, limit)


def pack(pieces: Sequence[str], measure: Measure, limit: int, sep: str = " ") -> list[str]:
    """Join consecutive pieces greedily while the result stays within `limit`.

    Every input piece must fit on its own. Sizes of joins are estimated as the sum of the
    parts plus the separators, then each joined piece is measured exactly and, in the rare
    case the estimate was low, split back in halves until every piece fits.
    """
    groups: list[list[str]] = []
    size = 0
    for piece in pieces:
        n = measure(piece)
        if groups and groups[-1] and size + len(sep) + n <= limit:
            groups[-1].append(piece)
            size += len(sep) + n
        else:
            groups.append([piece])
            size = n
    return [joined for group in groups for joined in _verified_join(group, measure, limit, sep)]


def _verified_join(group: list[str], measure: Measure, limit: int, sep: str) -> list[str]:
    joined = sep.join(group)
    if len(group) == 1 or measure(joined) <= limit:
        return [joined]
    mid = len(group) // 2
    return _verified_join(group[:mid], measure, limit, sep) + _verified_join(group[mid:], measure, limit, sep)


def plan(text: str, measure: Measure, limit: int, target: int | None = None) -> list[Segment]:
    """The whole split: pauses parsed, sentences found, overlong sentences cut to fit `limit`,
    then consecutive sentences packed up to `target` (default: `limit`; 0 or 1 keeps one
    sentence per piece). Every str in the result has measure <= limit. Pieces never cross a
    pause marker. Raises ValueError for a malformed pause marker."""
    target = limit if target is None else min(target, limit)
    out: list[Segment] = []
    for segment in parse_pauses(text):
        if isinstance(segment, Pause):
            out.append(segment)
            continue
        fitted = [piece for sentence in split_sentences(segment) for piece in fit(sentence, measure, limit)]
        out.extend(pack(fitted, measure, max(target, 1)) if target > 1 else fitted)
    return out


def split_for_streaming(text: str) -> list[str]:
    """`text` as one chunk per sentence, in order, for streaming: each is synthesised and
    sent as soon as it is done. Pause markers stay in place (a marker between two sentences
    starts the second one's text). Raises ValueError for a malformed pause marker. This is
    the one stream splitter: the engine and the TTS agent both use it."""
    chunks: list[str] = []
    pending = ""
    for segment in parse_pauses(text):
        if isinstance(segment, Pause):
            pending += format_pause(segment) + " "
            continue
        for sentence in split_sentences(segment):
            chunks.append(pending + sentence)
            pending = ""
    if pending:
        if chunks:
            chunks[-1] = f"{chunks[-1]} {pending.strip()}"
        else:
            chunks.append(pending.strip())
    return chunks


#: A streamed sentence still going past this many characters is handed out up to its last
#: clause break, so that a long reply without full stops starts to be heard.
LONG_SENTENCE_CHARS = 300


class SentenceStream:
    """The sentences of a text that arrives in pieces (a language model's reply, a few words
    at a time), each handed out as soon as it is known to be complete, in the chunks that
    `split_for_streaming` makes of the whole text.

    `add(piece)` returns the sentences that the text so far completes; `finish()` returns
    the rest, once no more text comes. A sentence is known to be complete only once the
    next one has begun: until then, "Dr." may still go on with "Smith" and "3." with "14".
    A sentence longer than `LONG_SENTENCE_CHARS` is handed out in pieces, each up to a
    clause break (after , ; : or a dash).
    """

    def __init__(self) -> None:
        self._text = ""  # from the start of the sentence not handed out yet

    def add(self, piece: str) -> list[str]:
        self._text += piece
        chunks = split_for_streaming(self._text)
        if len(chunks) < 2 or not _has_words(chunks[-1]):
            return self._long_sentence_piece()
        # The last chunk goes on, with the whitespace after it, which split_for_streaming
        # drops: it may part two words or, with the next piece's, two paragraphs.
        self._text = chunks[-1] + self._text[len(self._text.rstrip()):]
        return chunks[:-1] + self._long_sentence_piece()

    def _long_sentence_piece(self) -> list[str]:
        if len(self._text) <= LONG_SENTENCE_CHARS:
            return []
        breaks = [m.start() for m in _CLAUSE_BREAK.finditer(self._text)
                  if self._text.count("[", 0, m.start()) == self._text.count("]", 0, m.start())]
        if not breaks:
            return []  # no clause break outside a pause marker yet
        piece, self._text = self._text[:breaks[-1]].strip(), self._text[breaks[-1]:].lstrip()
        return [piece]

    def finish(self) -> list[str]:
        rest, self._text = self._text, ""
        return split_for_streaming(rest)


def _has_words(chunk: str) -> bool:
    """Whether `chunk` has begun a sentence: pause markers, whole or still arriving, do not
    (a pause at the end of the text belongs to the sentence before it)."""
    text = _INCOMPLETE_MARKER.sub("", _PAUSE_MARKER.sub(" ", chunk))
    return any(c.isalnum() for c in text)
