"""voicebus as the system under test: start it, drive it, pin its batch sizes, read its stats.

The bus runs as `scripts/run.sh` runs it (launcher, model manager and agents as processes,
tests/conftest.py's `start_bus`), on free ports, serving exactly the models the raw-engine
table measured and nothing else, so no other model competes for the cores.

Clients hold one REQ socket each for the whole run (reopened only after a lost reply), as
the HTTP clients of the peer hold one keep-alive connection: connection set-up is then not
part of what either system is charged for.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq

from bench.engine import BatchRunner
from bench.load import Outcome
from bench.workload import ROOT, STT_RATE, Mode, Task, Workload
from model_manager.config import BatchConfig, ModelSpec

#: Longer than the bus's own request timeout (limits.request_timeout_ms, 120 s), so a slow
#: request is reported by the bus as a `timeout` rather than guessed at by the client.
CLIENT_TIMEOUT_S = 180.0
SINGLE_ACTION = {"stt": "transcribe", "tts": "synthesize"}
BATCH_ACTION = {"stt": "batch_transcribe", "tts": "batch_synthesize"}


def wire_fields(task: Task, item: dict[str, Any]) -> dict[str, Any]:
    """An engine request as protocol fields: STT audio as raw float32 bytes (msgpack), TTS
    audio asked back as raw float32 PCM, so neither side spends time on text or WAV codecs."""
    if task == "stt":
        audio = np.asarray(item["audio"], dtype="<f4")
        return {"audio_data": audio.tobytes(), "dtype": "float32", "sample_rate": STT_RATE}
    return {"text": item["text"], "format": "pcm"}


def reply_audio_s(reply: dict[str, Any]) -> float:
    """Seconds of audio in a TTS reply or chunk (PCM float32 at its sample_rate)."""
    if reply.get("duration_s") is not None:
        return float(reply["duration_s"])
    audio = reply.get("audio") or b""
    return len(audio) / 4 / int(reply.get("sample_rate") or 24_000)


def engine_seconds(reply: dict[str, Any]) -> float | None:
    """The engine's time for one request, from its reply's `timing`: its `prepare` (checks,
    Whisper's speech detection) and its batch's compute, as the raw engine's `run_batch`,
    which prepares its requests too, spends them; None when the reply has no timing."""
    timing = reply.get("timing") or {}
    if timing.get("compute_ms") is None:
        return None
    return (timing["compute_ms"] + (timing.get("prepare_ms") or 0.0)) / 1000


def error_code(reply: dict[str, Any]) -> str | None:
    """None for a success; the error code (or "bad_reply") otherwise."""
    if reply.get("status") in ("success", "streaming"):
        return None
    error = reply.get("error")
    return str(error.get("code", "bad_reply")) if isinstance(error, dict) else "bad_reply"


class BusConnection:
    """One client of the bus on one task (see load.Connection). Not thread-safe: one per thread."""

    def __init__(
        self, address: str, workload: Workload, mode: Mode, timeout_s: float = CLIENT_TIMEOUT_S
    ) -> None:
        self.address = address
        self.workload = workload
        self.mode = mode
        self.timeout_s = timeout_s
        self._socket: zmq.Socket | None = None

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """One request and its reply; a lost reply comes back as a `no_reply` error."""
        if self._socket is None:
            self._socket = zmq.Context.instance().socket(zmq.REQ)
            self._socket.setsockopt(zmq.LINGER, 0)
            self._socket.connect(self.address)
        self._socket.send(msgpack.packb(message, use_bin_type=True))
        if not self._socket.poll(int(self.timeout_s * 1000)):
            # A REQ socket that missed its reply can never send again: start a fresh one.
            self.close()
            return {"status": "error", "error": {"code": "no_reply", "message": f"{self.timeout_s:g} s"}}
        return msgpack.unpackb(self._socket.recv(), raw=False)

    def call(self, item: dict[str, Any]) -> Outcome:
        task = self.workload.task
        if self.mode == "stream":
            return self._stream(item)
        reply = self.request({"action": SINGLE_ACTION[task], **wire_fields(task, item)})
        end = time.perf_counter()
        audio_s = self.workload.input_audio_s(item) if task == "stt" else reply_audio_s(reply)
        return Outcome(end=end, audio_s=audio_s, error=error_code(reply), engine_s=engine_seconds(reply))

    def _stream(self, item: dict[str, Any]) -> Outcome:
        fields = wire_fields(self.workload.task, item)
        opened = self.request({"action": "stream", "request_id": uuid.uuid4().hex, **fields})
        if error_code(opened):
            return Outcome(end=time.perf_counter(), error=error_code(opened))
        first: float | None = None
        audio_s = 0.0
        failed: str | None = None
        for _ in range(int(opened["num_chunks"])):
            chunk = self.request({"action": "next_chunk", "request_id": opened["request_id"]})
            code = error_code(chunk)
            if code is None:
                first = first or time.perf_counter()
                audio_s += reply_audio_s(chunk)
            else:
                failed = failed or code
                if "index" not in chunk:
                    break  # not a failed chunk but a failed stream: nothing more will come
        return Outcome(end=time.perf_counter(), first=first, audio_s=audio_s, error=failed)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


class Bus:
    """A voicebus started for this run, serving `specs` (one model per task), and stopped by
    `stop`. Every control call raises RuntimeError when the bus refuses it."""

    def __init__(self, specs: dict[Task, ModelSpec], warmup: bool) -> None:
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import start_bus

        self.specs = specs
        tmp = Path(tempfile.mkdtemp(prefix="voicebus-bench-"))
        env = {
            # Only the benchmarked models: the optional multilingual one would load too.
            "VOICEBUS__MODELS__STT": json.dumps([specs["stt"].model_dump()] if "stt" in specs else []),
            "VOICEBUS__MODELS__TTS": json.dumps([specs["tts"].model_dump()] if "tts" in specs else []),
            "VOICEBUS__BATCH_PROCESSING_CONFIG__WARMUP": "true" if warmup else "false",
            "VOICEBUS__LIMITS__JOURNAL_DIR": str(tmp / "journal"),
        }
        self._bus = start_bus(tmp, env)
        self.log_path = self._bus.log_path
        self._control: dict[str, BusConnection] = {}

    @property
    def http_url(self) -> str:
        """The HTTP gateway the launcher started with the bus (bench.gateway drives it)."""
        return self._bus.http_url

    def address(self, task: Task) -> str:
        return self._bus.stt_address if task == "stt" else self._bus.tts_address

    def connection(self, workload: Workload, mode: Mode) -> BusConnection:
        return BusConnection(self.address(workload.task), workload, mode)

    def control(self, task: Task, message: dict[str, Any]) -> dict[str, Any]:
        if task not in self._control:
            self._control[task] = BusConnection(self.address(task), Workload(task, ()), "single")
        reply = self._control[task].request(message)
        if reply.get("status") != "success":
            raise RuntimeError(f"bus refused {message.get('action')}: {reply.get('error')}")
        return reply

    def configure(self, task: Task, **settings: Any) -> None:
        self.control(task, {"action": "configure", "settings": settings})

    def pin_batch_size(self, task: Task, size: int) -> None:
        """Batches of exactly `size` (as long as that many compatible requests come together)."""
        self.configure(task, dynamic_batching=False, max_batch_size=size, min_batch_size=size)

    def restore(self, task: Task, config: BatchConfig) -> None:
        """Back to the configured policy (adaptive sizes by default)."""
        self.configure(
            task,
            dynamic_batching=config.dynamic_batching,
            max_batch_size=config.max_batch_size,
            min_batch_size=config.min_batch_size,
        )

    def histogram(self, task: Task) -> dict[str, int]:
        """The model's batch-size histogram so far ({"<size>": batches})."""
        name = self.specs[task].name
        for model in self.control(task, {"action": "stats"}).get("models", []):
            if model.get("model") == name:
                return dict(model.get("batch_size_histogram", {}))
        raise RuntimeError(f"stats has no model {name!r}")

    def stop(self) -> None:
        from conftest import stop_bus

        for connection in self._control.values():
            connection.close()
        stop_bus(self._bus)


def batch_runner(bus: Bus, workload: Workload) -> BatchRunner:
    """One batch_transcribe / batch_synthesize request per batch (see engine.batch_table)."""
    connection = bus.connection(workload, "single")
    task = workload.task

    def run(items: Sequence[dict[str, Any]]) -> None:
        batch = [wire_fields(task, item) for item in items]
        reply = connection.request({"action": BATCH_ACTION[task], "batch_data": batch})
        codes = [error_code(entry) for entry in reply.get("results", [])] if not error_code(reply) else []
        if error_code(reply) or len(codes) != len(items) or any(codes):
            raise RuntimeError(f"bus {BATCH_ACTION[task]} failed: {error_code(reply) or codes}")

    return run
