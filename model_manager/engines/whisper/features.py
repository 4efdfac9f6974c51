"""Whisper's encoder input: log-mel features of clips of any length, computed as faster-whisper
computes them, so the CTranslate2 and transformers engines see identical inputs."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from faster_whisper.feature_extractor import FeatureExtractor

#: The encoder's full input: 3000 frames of 10 ms.
N_FRAMES = 3000


@functools.lru_cache(maxsize=4)
def _feature_extractor(n_mels: int) -> FeatureExtractor:
    # Building the mel filter bank costs a few ms; the extractor is stateless after that
    # (as long as chunk_length is never passed, which would mutate it).
    return FeatureExtractor(feature_size=n_mels)


def log_mel(audio: np.ndarray, n_mels: int = 80, frames: int = N_FRAMES) -> np.ndarray:
    """[n_mels, frames] float32 log-mel of one clip of at most `frames` x 10 ms, exactly as
    faster-whisper feeds the encoder: the spectrogram of the clip alone, last frame dropped,
    then padded with 0.0 in the log-mel domain. (Padding the *audio* with silence, as
    transformers does, gives about -0.69 there instead and measurably worse WER: 9.6% against
    5.3% greedy.)"""
    mel = _feature_extractor(n_mels)(audio)[:, :-1]
    out = np.zeros((n_mels, frames), dtype=np.float32)
    n = min(mel.shape[1], frames)
    out[:, :n] = mel[:, :n]
    return out


def log_mel_batch(clips: Sequence[np.ndarray], n_mels: int = 80, frames: int = N_FRAMES) -> np.ndarray:
    """[N, n_mels, frames] float32 features for clips of different lengths (see `log_mel`)."""
    return np.stack([log_mel(c, n_mels, frames) for c in clips])
