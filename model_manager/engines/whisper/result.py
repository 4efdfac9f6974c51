"""What a Whisper engine answers for one request: a `Transcript`, with its `Segment`s and
`Word`s when the request asked for timestamps. `to_wire` gives the reply fields of
docs/protocol.md §3 and §3.1; times are seconds from the start of the request's audio.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Segment:
    """A stretch of text between two of Whisper's timestamp tokens; the last four fields are
    those of its window's decoding."""

    id: int
    start: float
    end: float
    text: str
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    temperature: float


@dataclass(frozen=True)
class Word:
    """One word as Whisper writes it (leading space kept); `segment` is its segment's id."""

    start: float
    end: float
    word: str
    probability: float
    segment: int


@dataclass(frozen=True)
class Transcript:
    """The text of one request. `language` is its first window's (None only for a request
    without speech on a multilingual model that was given none); `truncated`: a window's
    text was cut at its token bound. `segments` and `words` are None unless asked for."""

    text: str
    language: str | None
    truncated: bool = False
    segments: tuple[Segment, ...] | None = None
    words: tuple[Word, ...] | None = None

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"text": self.text, "language": self.language, "truncated": self.truncated}
        if self.segments is not None:
            wire["segments"] = [asdict(segment) for segment in self.segments]
        if self.words is not None:
            wire["words"] = [asdict(word) for word in self.words]
        return wire
