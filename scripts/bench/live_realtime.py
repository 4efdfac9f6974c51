"""One live stream through the HTTP gateway's `/v1/realtime` WebSocket (OpenAI's Realtime
transcription protocol), replayed as bench/live.py replays one over ZeroMQ: 100 ms chunks of
24 kHz pcm16 (what OpenAI clients send), each sent when it has been "recorded", while a
second thread reads the server's events as they come.

The outcome holds bus-like events, so bench/live.py's arithmetic applies unchanged: a
`completed` transcript is a `final` whose span is its item's speech_started/speech_stopped
times, a `failed` item an `error`. Realtime deltas say nothing of the audio they cover, so
this transport has no partial latencies.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Any

import numpy as np
from scipy.signal import resample_poly
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from bench.live_clips import CHUNK_S, CLIENT_TIMEOUT_S, LiveClip, StreamOutcome

REALTIME_RATE = 24000


def pcm16_24k(audio: np.ndarray) -> bytes:
    return (np.clip(resample_poly(audio, 3, 2), -1, 1) * 32767).astype("<i2").tobytes()


def replay_realtime(http_url: str, clip: LiveClip, start_at: float, chunk_s: float = CHUNK_S
                    ) -> StreamOutcome:
    """Stream `clip` to the gateway in real time from `start_at` (time.perf_counter)."""
    outcome = StreamOutcome(clip)
    url = http_url.replace("http://", "ws://", 1) + "/v1/realtime?intent=transcription"
    pcm = pcm16_24k(clip.audio)
    step = 2 * int(chunk_s * REALTIME_RATE)
    spans: dict[str, list[float]] = {}
    finished = threading.Event()
    lock = threading.Lock()

    def on_event(event: dict[str, Any]) -> None:
        now = time.perf_counter() - start_at
        kind, item = event.get("type"), event.get("item_id", "")
        with lock:
            if kind == "input_audio_buffer.speech_started":
                spans[item] = [event["audio_start_ms"] / 1000, event["audio_start_ms"] / 1000]
            elif kind == "input_audio_buffer.speech_stopped":
                spans.setdefault(item, [0.0, 0.0])[1] = event["audio_end_ms"] / 1000
            elif kind == "conversation.item.input_audio_transcription.completed":
                start, end = spans.get(item, [0.0, 0.0])
                outcome.events.append((now, {"type": "final", "text": event["transcript"],
                                             "start_s": start, "end_s": end}))
            elif kind == "conversation.item.input_audio_transcription.failed":
                outcome.events.append((now, {"type": "error", "error": event.get("error") or {}}))
            elif kind == "error" and outcome.error is None:
                outcome.error = str((event.get("error") or {}).get("code"))
            finals = sum(1 for _, e in outcome.events if e["type"] in ("final", "error"))
        if finals >= len(clip.utterances):
            finished.set()

    with connect(url, open_timeout=CLIENT_TIMEOUT_S, max_size=None) as socket:
        def read() -> None:
            try:
                for message in socket:
                    on_event(json.loads(message))
            except ConnectionClosed:
                pass
            finished.set()

        reading = threading.Thread(target=read, daemon=True)
        reading.start()
        socket.send(json.dumps({"type": "session.update", "session": {"type": "transcription", "audio": {
            "input": {"format": {"type": "audio/pcm", "rate": REALTIME_RATE},
                      "transcription": {"model": "whisper-1", "language": "en"},
                      "turn_detection": {"type": "server_vad"}}}}}))
        for k, start in enumerate(range(0, len(pcm), step)):
            delay = start_at + (k + 1) * chunk_s - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            socket.send(json.dumps({"type": "input_audio_buffer.append",
                                    "audio": base64.b64encode(pcm[start:start + step]).decode()}))
        socket.send(json.dumps({"type": "input_audio_buffer.commit"}))  # the end: the last final
        if not finished.wait(CLIENT_TIMEOUT_S) and outcome.error is None:
            outcome.error = "no_reply: not every utterance was completed"
    reading.join(timeout=5.0)
    return outcome
