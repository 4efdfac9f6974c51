"""Shared fixtures: a real bus (launcher, model manager, agents as processes) on free ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pytest
import zmq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Bus:
    process: subprocess.Popen
    stt_address: str
    tts_address: str
    log_path: Path

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


def start_bus(tmp_dir: Path, extra_env: dict[str, str] | None = None, ready_timeout_s: float = 300.0) -> Bus:
    ports = {name: free_port() for name in ("STT_PORT", "TTS_PORT", "MODEL_MANAGER_PORT")}
    env = {
        **os.environ,
        **{f"VOICEBUS__ENDPOINTS__{k}": str(v) for k, v in ports.items()},
        "VOICEBUS__LIMITS__OUTPUT_DIR": str(tmp_dir / "output"),
        **(extra_env or {}),
    }
    log_path = tmp_dir / "bus.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed by stop_bus via the process
    process = subprocess.Popen(
        [sys.executable, "-m", "agents.launcher"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    bus = Bus(
        process, f"tcp://127.0.0.1:{ports['STT_PORT']}", f"tcp://127.0.0.1:{ports['TTS_PORT']}", log_path
    )
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
        defaults = {"dynamic_batching": True, "max_batch_size": 8, "min_batch_size": 2}
        bus.request({"action": "configure", "settings": defaults}, address=address)
