"""Shared fixtures: a real bus (launcher, model manager, agents as processes) on free ports.

Tests come in two tiers: tests/unit/ (no models, no sockets: seconds, `scripts/test.sh unit`)
and tests/bus/ (real sockets and real models).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pytest
import zmq

ROOT = Path(__file__).resolve().parent.parent
# Helpers (speech.py) sit here; a few tests share stand-ins across the two tiers.
for folder in ("", "unit", "bus"):
    sys.path.insert(0, str(Path(__file__).resolve().parent / folder))


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports: every socket is held until all are found, so that the
    system cannot hand out one port twice."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_until(
    condition: Callable[[], object], timeout_s: float = 60.0, what: str = "the condition"
) -> object:
    """Call `condition` every 50 ms until it returns something true, and return that. The
    deadline is only a bound for a slow or loaded machine: the wait ends as soon as it holds."""
    deadline = time.monotonic() + timeout_s
    while not (answer := condition()):
        assert time.monotonic() < deadline, f"{what} did not hold within {timeout_s} s"
        time.sleep(0.05)
    return answer


@dataclass
class Bus:
    process: subprocess.Popen
    stt_address: str
    tts_address: str
    log_path: Path
    metrics_url: str = ""  # the model manager's Prometheus exporter
    stt_metrics_url: str = ""  # the STT agent's exporter (demand, model managers, live streams)
    tts_metrics_url: str = ""
    monitor_url: str = ""  # the launcher's monitoring page
    stt_backend_port: int = 0  # where model managers connect: for a test that attaches one of its own
    tts_backend_port: int = 0
    journal_dir: Path | None = None  # the agents' queue_for_batch journals
    http_url: str = ""  # the HTTP gateway
    wyoming_port: int = 0  # Wyoming, served by the gateway

    def request(
        self,
        message: dict | bytes,
        address: str | None = None,
        timeout_s: float = 120.0,
        encoding: str = "json",
    ) -> dict:
        """One request on a fresh REQ socket; bytes are sent as-is (for garbage tests)."""
        sock = zmq.Context.instance().socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(address or self.stt_address)
        try:
            if isinstance(message, bytes):
                sock.send(message)
            elif encoding == "json":
                sock.send_json(message)
            else:
                sock.send(msgpack.packb(message, use_bin_type=True))
            assert sock.poll(int(timeout_s * 1000)), f"no reply within {timeout_s} s"
            raw = sock.recv()
            return msgpack.unpackb(raw, raw=False) if raw[:1] != b"{" else __import__("json").loads(raw)
        finally:
            sock.close()


def start_bus(
    tmp_dir: Path, extra_env: dict[str, str] | None = None, ready_timeout_s: float = 300.0, wait: bool = True
) -> Bus:
    """Start the launcher on free ports; with `wait`, return once it says it is ready."""
    names = ("STT_PORT", "TTS_PORT", "STT_BACKEND_PORT", "TTS_BACKEND_PORT", "METRICS_PORT",
             "STT_METRICS_PORT", "TTS_METRICS_PORT", "MONITOR_PORT", "HTTP_PORT", "WYOMING_PORT")
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    env = {
        **os.environ,
        **{f"VOICEBUS__ENDPOINTS__{k}": str(v) for k, v in ports.items()},
        "VOICEBUS__LIMITS__OUTPUT_DIR": str(tmp_dir / "output"),
        "VOICEBUS__LIMITS__JOURNAL_DIR": str(tmp_dir / "journal"),  # never the user's ~/.cache
        **(extra_env or {}),
    }
    log_path = tmp_dir / "bus.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed by stop_bus via the process
    process = subprocess.Popen(
        [sys.executable, "-m", "agents.launcher"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    port = {name: env[f"VOICEBUS__ENDPOINTS__{name}"] for name in names}  # extra_env may set them
    bus = Bus(
        process,
        f"tcp://127.0.0.1:{port['STT_PORT']}",
        f"tcp://127.0.0.1:{port['TTS_PORT']}",
        log_path,
        metrics_url=f"http://127.0.0.1:{port['METRICS_PORT']}/metrics",
        monitor_url=f"http://127.0.0.1:{port['MONITOR_PORT']}/",
        stt_metrics_url=f"http://127.0.0.1:{port['STT_METRICS_PORT']}/metrics",
        tts_metrics_url=f"http://127.0.0.1:{port['TTS_METRICS_PORT']}/metrics",
        stt_backend_port=int(port["STT_BACKEND_PORT"]),
        tts_backend_port=int(port["TTS_BACKEND_PORT"]),
        journal_dir=Path(env["VOICEBUS__LIMITS__JOURNAL_DIR"]),
        http_url=f"http://127.0.0.1:{port['HTTP_PORT']}" if port["HTTP_PORT"] != "0" else "",
        wyoming_port=int(port["WYOMING_PORT"]),
    )
    if not wait:
        return bus
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if "voicebus is ready" in log_path.read_text():
            return bus
        if process.poll() is not None:
            break
        time.sleep(0.25)
    stop_bus(bus)
    raise RuntimeError(f"bus did not start:\n{log_path.read_text()[-4000:]}")


def stop_bus(bus: Bus, timeout_s: float = 60.0) -> int:
    if bus.process.poll() is None:
        bus.process.send_signal(signal.SIGTERM)
        try:
            bus.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            bus.process.kill()
            bus.process.wait()
    return bus.process.returncode


# Start-up warm-up measures every batch size on every model: right for a server, but it
# would add half a minute to each bus a test starts. One test keeps it on (test_lifecycle).
NO_WARMUP = {"VOICEBUS__BATCH_PROCESSING_CONFIG__WARMUP": "false"}


@pytest.fixture(scope="session")
def bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bus]:
    """The bus as `scripts/run.sh` starts it, with the default config (less the warm-up), on free ports."""
    started = start_bus(tmp_path_factory.mktemp("bus"), NO_WARMUP)
    yield started
    stop_bus(started)


# Small limits, so that tests can reach them cheaply over real sockets.
FRAGILE_LIMITS = {
    "VOICEBUS__LIMITS__MAX_MESSAGE_BYTES": str(1024 * 1024),
    "VOICEBUS__LIMITS__MAX_AUDIO_SECONDS": "30",
    "VOICEBUS__LIMITS__REQUEST_TIMEOUT_MS": "60000",
    "VOICEBUS__BATCH_PROCESSING_CONFIG__MAX_QUEUE_SIZE": "8",
    "VOICEBUS__LIMITS__MAX_OPEN_STREAMS": "2",
    "VOICEBUS__LIMITS__STREAM_IDLE_S": "3",
}


@pytest.fixture(scope="session")
def fragile_bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bus]:
    """A second bus for the tests that kill or freeze its processes (test_reliability,
    test_soak), so the session `bus` is never disturbed; shared, since each start costs
    half a minute. Every test leaves it serving again, as a supervised bus must be."""
    started = start_bus(tmp_path_factory.mktemp("fragile_bus"), {**NO_WARMUP, **FRAGILE_LIMITS})
    yield started
    stop_bus(started)


@contextmanager
def fixed_batching(bus: Bus, address: str, **settings: object) -> Iterator[dict]:
    """Switch the models behind `address` to the configured (non-adaptive) batch sizes for a
    test that needs batches to form whatever the cost model would choose on this machine."""
    reply = bus.request(
        {"action": "configure", "settings": {"dynamic_batching": False, **settings}}, address=address
    )
    assert reply["status"] == "success", reply
    try:
        yield reply
    finally:
        from model_manager.config import load_config

        configured = load_config().batch_processing_config
        defaults = {
            "dynamic_batching": configured.dynamic_batching,
            "max_batch_size": configured.max_batch_size,
            "min_batch_size": configured.min_batch_size,
            "max_batch_wait_ms": configured.max_batch_wait_ms,
            "lone_request_wait_ms": configured.lone_request_wait_ms,
        }
        bus.request({"action": "configure", "settings": defaults}, address=address)


@contextmanager
def queue_held(bus: Bus, address: str, seconds: float = 20.0, batch: int = 8) -> Iterator[None]:
    """Requests to `address` wait in the model's queue for `seconds` (a batch of `batch` that
    does not fill) instead of running: for tests of what happens to work before it runs."""
    wait_ms = int(seconds * 1000)
    settings = {
        "max_batch_size": batch,
        "min_batch_size": batch,
        "max_batch_wait_ms": wait_ms,
        "lone_request_wait_ms": wait_ms,
    }
    with fixed_batching(bus, address, **settings):
        yield
