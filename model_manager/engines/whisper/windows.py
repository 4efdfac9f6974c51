"""Cutting audio into Whisper's encoder windows."""

from __future__ import annotations

import numpy as np

from model_manager.audio import WHISPER_SAMPLE_RATE


def split_into_windows(
    audio: np.ndarray,
    window_s: float = 30.0,
    search_s: float = 5.0,
    frame_s: float = 0.02,
    sample_rate: int = WHISPER_SAMPLE_RATE,
) -> list[np.ndarray]:
    """Audio longer than one Whisper window, as consecutive pieces of at most `window_s`.

    Each cut goes at the quietest `frame_s` frame in the last `search_s` of its window, so
    it falls in a pause between words rather than inside one. The pieces are views that
    together hold every sample once, in order; audio of one window or less is one piece.
    """
    window = int(window_s * sample_rate)
    frame = max(1, int(frame_s * sample_rate))
    search = min(int(search_s * sample_rate), window - frame)
    pieces: list[np.ndarray] = []
    start = 0
    while len(audio) - start > window:
        lo = start + window - search
        frames = audio[lo : lo + search // frame * frame].reshape(-1, frame)
        quietest = int(np.argmin(np.mean(np.square(frames, dtype=np.float64), axis=1)))
        cut = lo + quietest * frame + frame // 2
        pieces.append(audio[start:cut])
        start = cut
    pieces.append(audio[start:])
    return pieces
