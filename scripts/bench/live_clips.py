"""The clips of the live-stream benchmark, and what one replayed stream gave back.

Each clip is `per_clip` of the WER set's phrases, spoken by one of its espeak-ng voices,
with 1 s pauses between them; `StreamOutcome` holds the events a stream got, timed on the
clip's clock, whatever the transport (bench/live.py over ZeroMQ, bench/live_realtime.py
over the gateway's WebSocket).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.workload import ROOT, STT_RATE

CHUNK_S = 0.1
LEAD_SILENCE_S = 0.5
GAP_S = 1.0
TAIL_SILENCE_S = 1.0
CLIENT_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class Utterance:
    text: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class LiveClip:
    audio: np.ndarray  # float32, 16 kHz
    utterances: tuple[Utterance, ...]

    @property
    def text(self) -> str:
        return " ".join(u.text for u in self.utterances)

    @property
    def seconds(self) -> float:
        return len(self.audio) / STT_RATE


def make_live_clips(count: int, per_clip: int = 6, phrases: Sequence[str] | None = None
                    ) -> list[LiveClip]:
    """`count` clips of `per_clip` phrases each, with pauses, rotating through `phrases` (the
    WER set's by default); each clip in the next of its espeak-ng voices."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from wer_set import ESPEAK_VOICES, PHRASES, espeak

    phrases = phrases or PHRASES

    clips = []
    for c in range(count):
        voice = ESPEAK_VOICES[c % len(ESPEAK_VOICES)]
        pieces = [np.zeros(int(LEAD_SILENCE_S * STT_RATE), np.float32)]
        utterances, t = [], LEAD_SILENCE_S
        for u in range(per_clip):
            sentence = phrases[(c * per_clip + u) % len(phrases)]
            spoken = _trimmed(espeak(sentence, voice, 160))
            utterances.append(Utterance(sentence, t, t + len(spoken) / STT_RATE))
            pause = GAP_S if u < per_clip - 1 else TAIL_SILENCE_S
            pieces += [spoken, np.zeros(int(pause * STT_RATE), np.float32)]
            t += len(spoken) / STT_RATE + pause
        clips.append(LiveClip(np.concatenate(pieces), tuple(utterances)))
    return clips


def _trimmed(audio: np.ndarray, floor: float = 1e-3) -> np.ndarray:
    """`audio` without the silence espeak-ng puts around speech (about 0.4 s after it), so
    that an utterance's end is where its speech ends and latencies are counted from there."""
    loud = np.nonzero(np.abs(audio) > floor)[0]
    return audio[loud[0] : loud[-1] + 1] if len(loud) else audio


@dataclass
class StreamOutcome:
    clip: LiveClip
    #: (arrival in seconds of the clip's clock, event), in the order they came.
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    error: str | None = None
