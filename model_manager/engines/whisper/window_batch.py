"""The windows one generate call decodes, and what each gives back.

- `Window`: at most 30 s of one request's audio, with its token bound.
- `CallPlan`: what the windows of one call share (task, beam size, window length, ...).
- `WindowText`: one window's text (and segments and words, when asked for).
- `transcript_of`: a request's `Transcript` from its windows' texts, in order.
- `WindowUnit` / `WindowPart`: one window of a long request scheduled on its own (the
  engine's `split`), and what it gives back; the request's parts join with `transcript_of`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from model_manager.engines.whisper.request import SAMPLE_RATE, SttRequest
from model_manager.engines.whisper.result import Segment, Transcript, Word
from model_manager.engines.whisper.window_policy import MAX_TEXT_TOKENS, window_frames


@dataclass(frozen=True, eq=False)
class Window:
    """One encoder window of a request: at most `request.window_s` of its audio, decoded to at
    most `max_tokens` text tokens (None: MAX_TEXT_TOKENS)."""

    audio: np.ndarray
    request: SttRequest
    max_tokens: int | None

    @property
    def call_key(self) -> tuple[Any, ...]:
        """What one generate call takes once for all its items."""
        r = self.request
        return (r.task, r.beam_size, r.window_s, r.repetition_penalty, r.details.batch_key())


@dataclass(frozen=True)
class WindowText:
    text: str
    language: str
    #: The decoder reached the window's token bound: the text was cut there (a loop, usually).
    truncated: bool = False
    #: When the request asked for timestamps (see timestamps.py): times in seconds from the
    #: window's start, unrounded; segment ids and words' `segment` count from 0 in the window.
    segments: tuple[Segment, ...] | None = None
    #: With "word" timestamps only.
    words: tuple[Word, ...] | None = None


@dataclass(frozen=True, eq=False)
class WindowUnit:
    """One window of a long request, as a request of its own: `WhisperEngine.split` makes one
    per window, and `run_batch` decodes it as it would have decoded that window of the whole
    request (same audio, same token bound, same call key)."""

    window: Window


@dataclass(frozen=True, eq=False)
class WindowPart:
    """What `run_batch` answers for a `WindowUnit`. The request's parts, in order, join into
    its transcript (`transcript_of`); alone, a part reads as the transcript of its window."""

    window: Window
    text: WindowText

    def to_wire(self) -> dict[str, Any]:
        return transcript_of(self.window.request, [(self.window, self.text)]).to_wire()


@dataclass(frozen=True)
class CallPlan:
    """The shared settings of one generate call over `windows` (see Window.call_key)."""

    task: str
    beam_size: int
    frames: int
    repetition_penalty: float
    #: Text tokens to decode at most: one more than the largest bound, so a window that
    #: reaches its bound is known to have been cut; or MAX_TEXT_TOKENS.
    decode_tokens: int

    @classmethod
    def of(cls, windows: Sequence[Window]) -> CallPlan:
        if not windows:
            raise ValueError("empty batch")
        keys = {w.call_key for w in windows}
        if len(keys) > 1:
            raise ValueError(f"windows of different calls in one batch: {sorted(keys)}")
        task, beam_size, window_s, penalty, _ = keys.pop()
        bounds = [w.max_tokens for w in windows]
        decode = MAX_TEXT_TOKENS if None in bounds else min(MAX_TEXT_TOKENS, max(b for b in bounds if b) + 1)
        return cls(task, beam_size, window_frames(window_s), penalty, decode)


def bounded(ids: Sequence[int], window: Window) -> tuple[list[int], bool]:
    """A window's decoded text ids cut to its own bound, and whether the bound cut them.
    Greedy and beam decoding of one item do not depend on its batch neighbours, so cutting
    at the item's own bound gives what decoding it alone with that bound gives."""
    bound = MAX_TEXT_TOKENS if window.max_tokens is None else min(window.max_tokens, MAX_TEXT_TOKENS)
    # Decoding stops one token past a bound below Whisper's own limit (see CallPlan), and at
    # that limit otherwise: reaching either means the text did not end by itself.
    stop = min(bound + 1, MAX_TEXT_TOKENS)
    ids = list(ids)
    return ids[:bound], len(ids) >= stop


def transcript_of(request: SttRequest, parts: Sequence[tuple[Window, WindowText]]) -> Transcript:
    """A request's transcript from its windows' texts, in order: the texts joined, the first
    window's language, truncated when any window was; and when the request asked for them,
    the windows' segments and words with times shifted by where each window starts in the
    request's audio and rounded to milliseconds, ids and segment numbers running on."""
    offset = 0.0
    segments: list[Segment] | None = None
    words: list[Word] | None = None
    for window, part in parts:
        if part.segments is not None:
            segments = segments if segments is not None else []
            first = len(segments)
            segments += [replace(s, id=first + s.id, start=round(s.start + offset, 3),
                                 end=round(s.end + offset, 3)) for s in part.segments]
            if part.words is not None:
                words = words if words is not None else []
                words += [replace(w, start=round(w.start + offset, 3), end=round(w.end + offset, 3),
                                  probability=round(w.probability, 4), segment=w.segment + first)
                          for w in part.words]
        offset += len(window.audio) / SAMPLE_RATE
    return Transcript(
        text=" ".join(p.text for _, p in parts if p.text),
        language=next((p.language for _, p in parts), request.language),
        truncated=any(p.truncated for _, p in parts),
        segments=tuple(segments) if segments is not None else None,
        words=tuple(words) if words is not None else None,
    )
