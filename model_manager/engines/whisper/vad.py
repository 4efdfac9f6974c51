"""Where the speech in a clip starts and ends, by faster-whisper's bundled Silero VAD.

Voice agents send silence and background noise all the time, and Whisper hears words in
both (3 s of silence comes back as ".", faint noise as "you"). Trimming to the speech also
shortens the window a request needs (see window_policy).

Only the two ends matter here, so the detector looks at the audio a chunk at a time from
each end and stops at the first chunk with speech: its cost stays that of a chunk or two
however long the recording, except for audio with no speech at all, which it reads once.
Silence between words is kept: Whisper needs it, and cutting it would change the text.
"""

from __future__ import annotations

import functools

import numpy as np
from faster_whisper.vad import VadOptions, get_speech_timestamps, get_vad_model

SAMPLE_RATE = 16_000
#: Speech kept beyond what the detector marks, each side: Silero marks onsets late and
#: decays early, and a clipped first or last phoneme costs a word.
PAD_S = 0.3
#: How much audio the detector reads at a time from each end.
CHUNK_S = 30.0


@functools.cache
def _options() -> VadOptions:
    # Short silences end a segment at once (faster-whisper's 2 s default would stretch the
    # last segment to the end of any clip with under 2 s of trailing silence).
    return VadOptions(min_silence_duration_ms=100, speech_pad_ms=0)


def load() -> None:
    """Load the detector now (about 0.1 s), not on the first request."""
    get_vad_model()


def _segments(audio: np.ndarray) -> list[dict[str, int]]:
    return get_speech_timestamps(audio, _options(), sampling_rate=SAMPLE_RATE)


def speech_span(audio: np.ndarray) -> tuple[int, int] | None:
    """(start, end) sample indices of the speech in `audio`, padded by PAD_S and clipped to
    the audio; None when the detector finds no speech anywhere."""
    chunk = int(CHUNK_S * SAMPLE_RATE)
    pad = int(PAD_S * SAMPLE_RATE)
    n = len(audio)
    start: int | None = None
    for offset in range(0, n, chunk):
        found = _segments(audio[offset : offset + chunk])
        if found:
            start = offset + found[0]["start"]
            break
    if start is None:
        return None
    if n <= chunk:  # one chunk held it all: its last segment is the end
        return max(0, start - pad), min(n, found[-1]["end"] + pad)
    end = start
    for stop in range(n, start, -chunk):
        offset = max(start, stop - chunk)
        found = _segments(audio[offset:stop])
        if found:
            end = offset + found[-1]["end"]
            break
    return max(0, start - pad), min(n, end + pad)
