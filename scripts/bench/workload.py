"""The inputs every system in one run gets: the same STT clips and TTS texts, in the same order.

STT clips are real speech spoken by espeak-ng (tests/speech.py; scripts/test.sh installs
it), so Whisper decodes real tokens rather than hallucinating on noise. TTS texts have two
sentences each, so a `stream` request has two chunks and time to first chunk means
something.

Requests go out whole ("single": transcribe / synthesize) for every throughput comparison,
because that is what the raw engine runs. TTS is also driven as streams ("stream": `stream`
+ `next_chunk`, one engine request per sentence) for time to first chunk; its throughput is
not comparable with whole texts and is not compared with them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

Task = Literal["stt", "tts"]
#: How a load request is sent: whole, one reply; or as a TTS stream of sentence chunks.
Mode = Literal["single", "stream"]
STT_RATE = 16_000

TTS_TEXTS = [
    "The weather today is sunny with a light breeze. Please remember to lock the door.",
    "Our meeting has been moved to three in the afternoon. The library closes at six.",
    "He finished the marathon in just under four hours. Fresh vegetables arrive on Tuesday.",
    "The museum has a new exhibition about ancient Egypt. Turn left at the next corner.",
]
#: --quick: the same shape (two sentences) at a fraction of the length; Kokoro's time grows
#: with the audio it makes, and the quick run has to fit in three minutes on two cores.
TTS_TEXTS_SHORT = [
    "Hi. See you.",
    "Thanks. Bye.",
    "Come in. Sit.",
    "Yes. Thanks.",
]


@dataclass(frozen=True)
class Workload:
    """The requests of one task, as engine requests (base.py's dicts, before `prepare`).

    `items[i]` is request i everywhere: raw engine, bus and peer all cycle through `items`
    in order, so every system sees the same mix.
    """

    task: Task
    items: tuple[dict[str, Any], ...]

    @property
    def modes(self) -> tuple[Mode, ...]:
        """The ways load is sent: whole requests always, streams too where the task has them."""
        return ("single", "stream") if self.task == "tts" else ("single",)

    def item(self, index: int) -> dict[str, Any]:
        return self.items[index % len(self.items)]

    def input_audio_s(self, item: dict[str, Any]) -> float:
        """Seconds of input audio (STT); 0 for TTS, whose audio is the output."""
        return len(item["audio"]) / STT_RATE if self.task == "stt" else 0.0


def make_workload(task: Task, count: int, quick: bool) -> Workload:
    """`count` requests for `task`, cycling through the clips or texts. Raises RuntimeError
    with the fix when espeak-ng, which speaks the STT clips, is missing."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if task == "stt":
        clips = _stt_clips()
        items = tuple({"audio": clips[i % len(clips)]} for i in range(count))
        return Workload("stt", items)
    texts = TTS_TEXTS_SHORT if quick else TTS_TEXTS
    return Workload("tts", tuple({"text": texts[i % len(texts)]} for i in range(count)))


def _stt_clips() -> list[np.ndarray]:
    sys.path.insert(0, str(ROOT / "tests"))
    from speech import SENTENCES, speak

    try:
        return [speak(sentence) for sentence in SENTENCES]
    except FileNotFoundError:
        raise RuntimeError("espeak-ng speaks the STT clips: apt-get install espeak-ng") from None
