"""A long recording runs as 30 s window units on the real bus: a short request sent while it
is transcribed is answered first, and the long one's text is what it is when sent alone."""

from __future__ import annotations

import threading
import time

import numpy as np
from conftest import fixed_batching, wait_until
from speech import SENTENCES, speak, word_error_rate

MODEL = "whisper-tiny.en"


def transcribe(bus, audio: np.ndarray) -> dict:
    message = {"action": "transcribe", "audio_data": audio.astype("<f4").tobytes(), "dtype": "float32",
               "sample_rate": 16000, "model_pref": MODEL}
    return bus.request(message, encoding="msgpack")


def model_stats(bus) -> dict:
    models = bus.request({"action": "stats"})["models"]
    return next(m for m in models if m["model"] == MODEL)


def split_requests(bus) -> int:
    return model_stats(bus)["split_requests"]


def long_recording(seconds: float) -> np.ndarray:
    pause = np.zeros(8000, np.float32)
    parts: list[np.ndarray] = []
    while sum(len(p) for p in parts) < seconds * 16000:
        parts += [speak(SENTENCES[len(parts) // 2 % len(SENTENCES)]), pause]
    return np.concatenate(parts)


def test_a_short_request_is_answered_while_a_long_recording_is_transcribed(bus):
    long, short = long_recording(65), speak(SENTENCES[1])  # three 30 s windows
    assert model_stats(bus)["long_lane"]  # on a CPU the units run on a lane of their own
    # One window per batch, whatever this machine's measured best size for 30 s windows.
    with fixed_batching(bus, bus.stt_address, max_batch_size=1, min_batch_size=1):
        alone = transcribe(bus, long)
        assert alone["status"] == "success" and alone["text"], alone
        before = split_requests(bus)
        answered: dict[str, tuple[float, dict]] = {}

        def send(name: str, audio: np.ndarray) -> None:
            reply = transcribe(bus, audio)
            answered[name] = (time.monotonic(), reply)

        sending = threading.Thread(target=send, args=("long", long))
        sending.start()
        wait_until(lambda: split_requests(bus) > before, 60, "the long recording queued as units")
        send("short", short)
        sending.join(120)
    (long_end, long_reply), (short_end, short_reply) = answered["long"], answered["short"]
    assert short_reply["status"] == "success" and word_error_rate(SENTENCES[1], short_reply["text"]) == 0
    assert short_end < long_end  # it did not wait for the long one's remaining windows
    assert long_reply["status"] == "success"
    assert long_reply["text"] == alone["text"]  # joined in order: the same text as sent alone
    assert long_reply["timing"]["compute_ms"] > short_reply["timing"]["compute_ms"]
