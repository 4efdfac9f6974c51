"""Real speech for tests, spoken by espeak-ng (installed by scripts/test.sh) and cached per session."""

from __future__ import annotations

import functools
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call me back when you get this message.",
    "It is going to rain tomorrow in the afternoon.",
    "We need three more chairs for the meeting room.",
    "The train to the city leaves at noon every day.",
    "She bought fresh bread and a bottle of milk.",
    "Turn off the lights before you leave the house.",
    "My favorite color has always been dark green.",
]


@functools.cache
def _espeak_wav(text: str, voice: str) -> tuple[np.ndarray, int]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(path), text], check=True)
        audio, rate = sf.read(path, dtype="float32")
    return audio, rate


def speak(text: str, sample_rate: int = 16000, voice: str = "en-us") -> np.ndarray:
    """float32 mono speech of `text` at `sample_rate`, in an espeak-ng `voice` (language)."""
    audio, rate = _espeak_wav(text, voice)
    if rate != sample_rate:
        g = np.gcd(rate, sample_rate)
        audio = resample_poly(audio, sample_rate // g, rate // g).astype(np.float32)
    return audio.copy()


def word_error_rate(reference: str, hypothesis: str) -> float:
    """WER after lower-casing and dropping punctuation, by word-level edit distance."""

    def words(s: str) -> list[str]:
        cleaned = "".join(c.lower() if c.isalnum() or c in " '" else " " for c in s)
        return cleaned.split()

    ref, hyp = words(reference), words(hypothesis)
    dist = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, dist[0] = dist[0], i
        for j, h in enumerate(hyp, 1):
            prev, dist[j] = dist[j], min(dist[j] + 1, dist[j - 1] + 1, prev + (r != h))
    return dist[len(hyp)] / max(len(ref), 1)
