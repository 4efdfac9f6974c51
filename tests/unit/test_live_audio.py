"""A live stream's audio (agents/live/audio.py): what arrived, when, and what is kept."""

from __future__ import annotations

import numpy as np

from agents.live.audio import StreamAudio


def ramp(start: int, count: int) -> np.ndarray:
    return np.arange(start, start + count, dtype=np.float32)


def test_audio_is_cut_by_time_across_pieces_and_knows_when_each_came():
    audio = StreamAudio()
    audio.append(ramp(0, 16000), arrived_at=10.0)
    audio.append(np.zeros(0, np.float32), arrived_at=10.5)  # nothing: no piece
    audio.append(ramp(16000, 8000), arrived_at=11.0)
    assert audio.seconds == 1.5 and audio.buffered_seconds == 1.5
    assert np.array_equal(audio.between(0.9, 1.1), ramp(14400, 3200))
    assert audio.arrival_of(0.5, default=0.0) == 10.0
    assert audio.arrival_of(1.2, default=0.0) == 11.0
    assert audio.arrival_of(9.0, default=0.0) == 11.0  # past the end: the newest audio's


def test_audio_before_the_kept_point_is_let_go_piece_by_piece():
    audio = StreamAudio()
    for i in range(3):
        audio.append(ramp(i * 8000, 8000), arrived_at=float(i))
    audio.keep_from(0.6)  # the second piece holds 0.6 s: kept whole
    assert audio.kept_from_s == 0.5 and audio.buffered_seconds == 1.0
    assert audio.arrival_of(0.1, default=-1.0) == -1.0
    assert len(audio.between(0.0, 0.75)) == 4000  # only what is kept
    audio.keep_from(5.0)
    assert audio.buffered_seconds == 0.0 and audio.kept_from_s == audio.seconds == 1.5
    assert len(audio.between(0.0, 1.5)) == 0
