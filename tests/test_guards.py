"""No request can take a process down: the model manager's message handling and the agent's
request guard, driven directly (no models: these are the handlers' own logic), and the
launcher's supervision step with real child processes."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import pytest
import zmq
from conftest import free_port

from agents import launcher
from agents.service_agent import ServiceAgent
from agents.services import TTS, Service
from model_manager import protocol
from model_manager.agent import ModelManagerAgent
from model_manager.config import load_config


class CapturingRouter:
    """Stands in for the model manager's ROUTER socket: keeps what it would send."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, dict]] = []

    def send_multipart(self, frames: list[bytes]) -> None:
        self.sent.append((frames[0], protocol.unpack(frames[2])))


def internal(message: dict) -> list[bytes]:
    return [b"agent", protocol.INTERNAL_VERSION, protocol.pack(message)]


def infer(job_id: str, timeout_ms: int = 60_000) -> dict:
    return {"type": "infer", "job_id": job_id, "task": "tts", "request": {"text": "Hi."},
            "timeout_ms": timeout_ms}


@pytest.fixture
def loading_manager() -> ModelManagerAgent:
    """A model manager whose models are still loading (none ever will)."""
    config = load_config(environ={"VOICEBUS__BATCH_PROCESSING_CONFIG__MAX_QUEUE_SIZE": "1"})
    return ModelManagerAgent(config)


def test_an_unexpected_failure_is_answered_with_internal_error_and_its_cause(loading_manager, monkeypatch):
    router = CapturingRouter()

    def broken() -> dict:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(loading_manager, "stats", broken)
    loading_manager._handle(router, internal({"type": "stats", "job_id": "s1"}), stopping=False)
    (_, reply), = router.sent
    assert reply["type"] == "stats" and reply["job_id"] == "s1" and reply["ok"] is False
    assert reply["error"]["code"] == "internal_error"
    assert "ZeroDivisionError: a bug" in reply["error"]["message"]


def test_configure_with_a_model_that_is_not_a_name_is_invalid_field_at_once(loading_manager):
    router = CapturingRouter()
    message = {"type": "configure", "job_id": "c1", "model": ["x"], "settings": {"max_batch_size": 2}}
    loading_manager._handle(router, internal(message), stopping=False)
    (_, reply), = router.sent
    assert reply["ok"] is False and reply["error"]["code"] == "invalid_field"


def test_jobs_held_while_models_load_are_bounded_cancellable_and_keep_their_deadline(loading_manager):
    router = CapturingRouter()
    limit = loading_manager.held_limit
    for i in range(limit + 1):
        loading_manager._handle(router, internal(infer(f"j{i}", timeout_ms=50 if i == 0 else 60_000)), False)
    (_, refused), = router.sent  # the one beyond the bound, turned away for now
    assert refused["job_id"] == f"j{limit}" and refused["error"]["code"] == "overloaded"
    loading_manager._handle(router, internal({"type": "cancel", "job_ids": ["j1"]}), False)
    assert [h.message["job_id"] for h in loading_manager._held] == [f"j{i}" for i in range(limit) if i != 1]
    time.sleep(0.1)  # j0's 50 ms pass while the models load
    loading_manager._loaded.set()
    router.sent.clear()
    loading_manager._release_held(router, stopping=False)
    codes = {reply["job_id"]: reply["error"]["code"] for _, reply in router.sent}
    assert codes["j0"] == "timeout"  # its deadline counted from its arrival, not its release
    assert "j1" not in codes



@contextmanager
def agent_in_thread(service: Service, tmp_path) -> Iterator[zmq.Socket]:
    """A service agent serving on a thread of this process, and a REQ socket connected to it."""
    config = load_config(environ={"VOICEBUS__LIMITS__JOURNAL_DIR": str(tmp_path)})
    port = free_port()
    agent = ServiceAgent(service, config, port=port)
    stop = threading.Event()
    thread = threading.Thread(target=agent.serve, args=(stop,), daemon=True)
    thread.start()
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{port}")
    try:
        yield sock
    finally:
        sock.close()
        stop.set()
        thread.join(35)

def test_a_request_whose_handling_fails_unexpectedly_gets_internal_error_and_the_agent_serves_on(tmp_path):
    def broken_parse(fields: dict, limits: object) -> dict:
        raise ZeroDivisionError("parse bug")

    with agent_in_thread(replace(TTS, parse_item=broken_parse), tmp_path) as sock:
        sock.send_json({"action": "synthesize", "text": "Hi.", "request_id": "r1"})
        assert sock.poll(10_000)
        reply = sock.recv_json()
        assert reply["error"]["code"] == "internal_error" and "parse bug" in reply["error"]["message"]
        assert reply["request_id"] == "r1"
        sock.send_json({"action": "health"})
        assert sock.poll(10_000)
        health = sock.recv_json()
        assert health["live"] is True and health["protocol"] == protocol.PROTOCOL_VERSION


def child(code: int) -> launcher.Child:
    return launcher.Child("test-child", [sys.executable, "-c", f"import sys; sys.exit({code})"])


def test_a_crashing_process_is_restarted_with_backoff_and_never_given_up(monkeypatch):
    monkeypatch.setattr(launcher, "RESTART_BACKOFF_S", (0.0, 0.1))
    crashing = child(1)
    crashing.start()
    deadline = time.monotonic() + 30
    while crashing.restarts < 5 and time.monotonic() < deadline:
        launcher.tend([crashing], time.monotonic())
        time.sleep(0.02)
    assert crashing.restarts >= 5  # past the end of the backoff table: still restarted


def test_a_configuration_error_stops_supervision():
    failing = child(launcher.CONFIG_ERROR_EXIT)
    failing.start()
    failing.process.wait(10)
    with pytest.raises(launcher.ConfigurationFailed):
        launcher.tend([failing], time.monotonic())


def test_a_job_the_model_manager_link_cannot_take_is_answered_at_once(tmp_path, monkeypatch):
    """The link's high-water mark reached: the client hears `overloaded` now, not a timeout."""
    from agents.link import ModelManagerLink

    monkeypatch.setattr(ModelManagerLink, "alive", property(lambda self: True))
    monkeypatch.setattr(ModelManagerLink, "send", lambda self, message, body=None: False)
    with agent_in_thread(TTS, tmp_path) as sock:
        started = time.monotonic()
        sock.send_json({"action": "synthesize", "text": "Hi.", "request_id": "r2"})
        assert sock.poll(10_000)
        reply = sock.recv_json()
        assert reply["error"]["code"] == "overloaded" and reply["request_id"] == "r2"
        assert time.monotonic() - started < 2.0
