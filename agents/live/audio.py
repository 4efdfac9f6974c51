"""A live stream's audio: the samples that arrived, when each piece came, and how much is kept.

`StreamAudio` is pure (no clock of its own: `append` is told when its piece arrived). Times
are seconds from the start of the stream's audio, at 16 kHz. The caller decides how far
back audio is needed (`keep_from`); pieces wholly before that are let go, so the memory a
stream holds is bounded by what its decodes may still hear, not by its length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agents.live.vad import SAMPLE_RATE


@dataclass(frozen=True)
class _Piece:
    start: int  # absolute sample index
    samples: np.ndarray
    arrived_at: float


class StreamAudio:
    def __init__(self) -> None:
        self.samples_received = 0
        self._pieces: list[_Piece] = []

    @property
    def seconds(self) -> float:
        """How much has arrived, kept or not: the end of the audio."""
        return self.samples_received / SAMPLE_RATE

    @property
    def buffered_seconds(self) -> float:
        return sum(len(p.samples) for p in self._pieces) / SAMPLE_RATE

    @property
    def kept_from_s(self) -> float:
        return self._pieces[0].start / SAMPLE_RATE if self._pieces else self.seconds

    def append(self, samples: np.ndarray, arrived_at: float) -> None:
        """Append float32 16 kHz `samples` that arrived at `arrived_at`."""
        if len(samples):
            piece = _Piece(self.samples_received, np.asarray(samples, dtype=np.float32), arrived_at)
            self._pieces.append(piece)
            self.samples_received += len(samples)

    def between(self, start_s: float, end_s: float) -> np.ndarray:
        """The kept samples from `start_s` to `end_s`."""
        start, end = round(start_s * SAMPLE_RATE), round(end_s * SAMPLE_RATE)
        pieces = [
            p.samples[max(0, start - p.start) : max(0, end - p.start)]
            for p in self._pieces
            if p.start < end and p.start + len(p.samples) > start
        ]
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)

    def arrival_of(self, time_s: float, default: float) -> float:
        """When the audio at `time_s` arrived (`default` when it is not kept)."""
        sample = min(round(time_s * SAMPLE_RATE), self.samples_received - 1)
        for piece in self._pieces:
            if piece.start <= sample < piece.start + len(piece.samples):
                return piece.arrived_at
        return default

    def keep_from(self, time_s: float) -> None:
        """Let go of the pieces that end at or before `time_s`."""
        keep_from = round(time_s * SAMPLE_RATE)
        while self._pieces and self._pieces[0].start + len(self._pieces[0].samples) <= keep_from:
            self._pieces.pop(0)
