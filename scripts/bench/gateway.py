"""The HTTP gateway as a transport: the same workload through HTTP and through ZeroMQ, on
the same bus, interleaved, at 8 clients; and TTS time to first audio byte over HTTP
streaming against time to first chunk over ZeroMQ.

HTTP clients hold one keep-alive connection each (httpx), as the ZeroMQ clients hold one
socket. STT uploads a WAV file per request (made before the clock starts) to
/v1/audio/transcriptions, as an OpenAI client does; TTS asks seed 001's /tts for raw samples
(pcm), which runs the same `synthesize` on the bus as the ZeroMQ clients; streams are
/v1/audio/speech (response_format pcm) against the bus's `stream` + `next_chunk`.
"""

from __future__ import annotations

import io
import time
from typing import Any

import httpx
import numpy as np
import soundfile as sf

from bench.load import Connection, Outcome, Sample, Tick, closed_loop_samples, summarize
from bench.stats import latency_summary, ratio
from bench.workload import STT_RATE, Mode, Workload

#: Longer than the bus's own request timeout, as for the ZeroMQ clients (bus.CLIENT_TIMEOUT_S).
CLIENT_TIMEOUT_S = 180.0
PCM_BYTES_PER_S = 2 * 24_000


def wav_upload(audio: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.asarray(audio, dtype=np.float32), STT_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


class HttpConnection:
    """One HTTP client of the gateway (see load.Connection). Not thread-safe: one per thread."""

    def __init__(self, base_url: str, workload: Workload, mode: Mode) -> None:
        self.workload = workload
        self.mode = mode
        self.client = httpx.Client(base_url=base_url, timeout=CLIENT_TIMEOUT_S)
        # Keyed by the clip's identity: the workload cycles through a few clips.
        self.uploads = {id(item["audio"]): wav_upload(item["audio"])
                        for item in workload.items if workload.task == "stt"}

    def call(self, item: dict[str, Any]) -> Outcome:
        try:
            if self.workload.task == "stt":
                return self._transcribe(item)
            return self._stream(item) if self.mode == "stream" else self._synthesize(item)
        except httpx.HTTPError as exc:
            return Outcome(end=time.perf_counter(), error=f"http_{type(exc).__name__}")

    def _transcribe(self, item: dict[str, Any]) -> Outcome:
        reply = self.client.post("/v1/audio/transcriptions", data={"model": "whisper-1"},
                                 files={"file": ("clip.wav", self.uploads[id(item["audio"])], "audio/wav")})
        end = time.perf_counter()
        return Outcome(end=end, audio_s=self.workload.input_audio_s(item), error=_error(reply),
                       engine_s=_engine_s(reply))

    def _synthesize(self, item: dict[str, Any]) -> Outcome:
        reply = self.client.post("/tts", json={"text": item["text"], "format": "pcm"})
        end = time.perf_counter()
        return Outcome(end=end, audio_s=len(reply.content) / PCM_BYTES_PER_S, error=_error(reply),
                       engine_s=_engine_s(reply))

    def _stream(self, item: dict[str, Any]) -> Outcome:
        body = {"model": "tts-1", "input": item["text"], "response_format": "pcm", "stream_format": "audio"}
        first: float | None = None
        received = 0
        with self.client.stream("POST", "/v1/audio/speech", json=body) as reply:
            if reply.status_code != 200:
                reply.read()
                return Outcome(end=time.perf_counter(), error=_error(reply))
            for piece in reply.iter_bytes():
                if piece and first is None:
                    first = time.perf_counter()
                received += len(piece)
        return Outcome(end=time.perf_counter(), first=first, audio_s=received / PCM_BYTES_PER_S)

    def close(self) -> None:
        self.client.close()


def _engine_s(reply: httpx.Response) -> float | None:
    """The engine's time for the request (its prepare and its batch's compute), as the
    gateway passes it on (see bench.bus.engine_seconds)."""
    compute_ms = reply.headers.get("X-Voicebus-Compute-Ms")
    prepare_ms = reply.headers.get("X-Voicebus-Prepare-Ms") or 0
    return None if compute_ms is None else (float(compute_ms) + float(prepare_ms)) / 1000


def _error(reply: httpx.Response) -> str | None:
    if reply.status_code == 200:
        return None
    try:
        return str(reply.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return f"http_{reply.status_code}"


def compare_transports(bus: Any, workload: Workload, clients: int, requests: int, rounds: int, singles: int,
                       tick: Tick) -> dict[str, Any]:
    """HTTP against ZeroMQ on `bus` (bench.bus.Bus, configured policy): closed loop at
    `clients`, `requests` per transport and round, in rounds ordered ZeroMQ, HTTP, HTTP,
    ZeroMQ, ... so that drifting machine load hits both alike; for TTS also `singles` lone
    streams per transport, interleaved, for the time to first audio."""
    def connect(transport: str, mode: Mode) -> Connection:
        if transport == "http":
            return HttpConnection(bus.http_url, workload, mode)
        return bus.connection(workload, mode)

    samples: dict[str, list[Sample]] = {"zeromq": [], "http": []}
    walls = {"zeromq": 0.0, "http": 0.0}
    per_round: list[dict[str, float | None]] = []
    for index in range(rounds):
        order = ("zeromq", "http") if index % 2 == 0 else ("http", "zeromq")
        measured: dict[str, float | None] = {}
        for transport in order:
            got, wall = closed_loop_samples(lambda t=transport: connect(t, "single"), workload, clients,
                                            requests, tick)
            samples[transport] += got
            walls[transport] += wall
            measured[transport] = sum(s.outcome.ok for s in got) / wall if wall > 0 else None
        per_round.append({**measured, "ratio": ratio(measured["http"], measured["zeromq"])})
    rows = {t: {"clients": clients, **summarize(samples[t], walls[t])} for t in samples}
    result: dict[str, Any] = {
        "clients": clients, "rounds": per_round, **rows,
        "throughput_ratio": ratio(rows["http"]["throughput_rps"], rows["zeromq"]["throughput_rps"]),
        "p99_ratio": ratio(rows["http"]["p99_ms"], rows["zeromq"]["p99_ms"]),
    }
    if singles:
        result.update(lone_requests(connect, workload, singles, "single", tick))
    if "stream" in workload.modes and singles:
        result.update(lone_requests(connect, workload, singles, "stream", tick))
    return result


def lone_requests(connect: Any, workload: Workload, singles: int, mode: Mode, tick: Tick) -> dict[str, Any]:
    """`singles` lone requests per transport, alternating, so that each pair ran under the
    same machine load: latency of whole requests ("single": what the gateway adds to one
    request is the median of the paired differences), or time to the first audio of streams
    ("stream": the first body byte over HTTP, the first chunk over ZeroMQ)."""
    taken: dict[str, list[float]] = {"zeromq": [], "http": []}
    overhead: dict[str, list[float]] = {"zeromq": [], "http": []}
    connections = {t: connect(t, mode) for t in taken}
    try:
        for index in range(singles):
            for transport in (("zeromq", "http") if index % 2 == 0 else ("http", "zeromq")):
                start = time.perf_counter()
                outcome = connections[transport].call(workload.item(index))
                if outcome.ok:
                    end = outcome.first if mode == "stream" else outcome.end
                    taken[transport].append((end or outcome.end) - start)
                    if mode == "single" and outcome.engine_s is not None:
                        overhead[transport].append(outcome.end - start - outcome.engine_s)
                tick(1)
    finally:
        for connection in connections.values():
            connection.close()
    name = "first_audio" if mode == "stream" else "lone_latency"
    summary = {t: latency_summary(values, prefix=f"{name}_") for t, values in taken.items()}
    pairs = [h - z for z, h in zip(taken["zeromq"], taken["http"], strict=False)]
    result = {name: summary, f"{name}_p50_ratio": ratio(summary["http"][f"{name}_p50_ms"],
                                                         summary["zeromq"][f"{name}_p50_ms"]),
              f"{name}_paired_difference_ms_p50": None if not pairs else float(np.median(pairs)) * 1000}
    if mode == "single":
        # Latency minus the engine's time for that request, which both transports report:
        # what the transport adds, free of the engine's speed swings on a busy machine.
        result["overhead_ms"] = {t: latency_summary(v) for t, v in overhead.items()}
    return result
