"""No request can take a process down: the model manager's message handling (over its real
backend link, with no models: these are the handlers' own logic), the agent's request
guard, and the launcher's supervision step with real child processes."""

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
from model_manager import link_protocol, protocol
from model_manager.agent import ModelManagerAgent
from model_manager.config import load_config


class Agent:
    """The agent's side of the backend, for a model manager whose models never finish loading
    (until the test says so): a ROUTER it connects out to, reached by its instance id."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        port = free_port()
        config = load_config(environ={"VOICEBUS__BATCH_PROCESSING_CONFIG__MAX_QUEUE_SIZE": "1",
                                      "VOICEBUS__ENDPOINTS__METRICS_PORT": "0",
                                      "VOICEBUS__MODEL_MANAGER__AGENTS": f"[tcp://127.0.0.1:{port}]"})
        self.sock = zmq.Context.instance().socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.bind(f"tcp://127.0.0.1:{port}")
        self.manager = ModelManagerAgent(config)
        monkeypatch.setattr(self.manager, "load_models", lambda: None)  # loading, for ever
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.manager.serve, args=(self.stop,), daemon=True)
        self.thread.start()

    def send(self, message: dict) -> None:
        deadline = time.monotonic() + 60  # a loaded machine starts the manager slowly
        while True:  # until the manager's connection is up
            try:
                self.sock.send_multipart([self.manager.instance.encode(), *link_protocol.encode(message)])
                return
            except zmq.ZMQError:
                assert time.monotonic() < deadline, "the model manager did not connect"
                time.sleep(0.05)

    def replies(self, count: int, timeout_s: float = 60.0) -> list[dict]:
        got: list[dict] = []
        deadline = time.monotonic() + timeout_s
        while len(got) < count and self.sock.poll(max(1, int(1000 * (deadline - time.monotonic())))):
            message = link_protocol.decode(self.sock.recv_multipart()[1:])
            if isinstance(message, dict):
                got.append(message)
        return got

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.sock.close()


def infer(job_id: str, timeout_ms: int = 60_000) -> dict:
    return {"type": "infer", "job_id": job_id, "task": "tts", "request": {"text": "Hi."},
            "timeout_ms": timeout_ms}


@pytest.fixture
def agent(monkeypatch: pytest.MonkeyPatch) -> Iterator[Agent]:
    made = Agent(monkeypatch)
    yield made
    made.close()


def test_an_unexpected_failure_is_answered_with_internal_error_and_its_cause(agent, monkeypatch):
    def broken() -> dict:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(agent.manager, "stats", broken)
    agent.send({"type": "stats", "job_id": "s1"})
    (reply,) = agent.replies(1)
    assert reply["type"] == "stats" and reply["job_id"] == "s1" and reply["ok"] is False
    assert reply["error"]["code"] == "internal_error"
    assert "ZeroDivisionError: a bug" in reply["error"]["message"]


def test_configure_with_a_model_that_is_not_a_name_is_invalid_field_at_once(agent):
    agent.send({"type": "configure", "job_id": "c1", "model": ["x"], "settings": {"max_batch_size": 2}})
    (reply,) = agent.replies(1)
    assert reply["ok"] is False and reply["error"]["code"] == "invalid_field"


def test_jobs_held_while_models_load_are_bounded_cancellable_and_keep_their_deadline(agent):
    limit = agent.manager.held_limit
    for i in range(limit + 1):
        agent.send(infer(f"j{i}", timeout_ms=50 if i == 0 else 60_000))
    (refused,) = agent.replies(1)  # the one beyond the bound, turned away for now
    assert refused["job_id"] == f"j{limit}" and refused["error"]["code"] == "overloaded"
    agent.send({"type": "cancel", "job_ids": ["j1"]})
    agent.send({"type": "stats", "job_id": "barrier"})  # every message before it is handled
    assert agent.replies(1)[0]["job_id"] == "barrier"
    time.sleep(0.1)  # j0's 50 ms pass while the models load
    agent.manager.models.loaded.set()  # loading ends (with no model: the rest are model_unavailable)
    replies = agent.replies(limit - 1)
    codes = {reply["job_id"]: reply["error"]["code"] for reply in replies}
    assert codes["j0"] == "timeout"  # its deadline counted from its arrival, not its release
    assert "j1" not in codes and set(codes) == {f"j{i}" for i in range(limit) if i != 1}


@contextmanager
def agent_in_thread(service: Service, tmp_path, **env: str) -> Iterator[zmq.Socket]:
    """A service agent serving on a thread of this process, and a REQ socket connected to it."""
    config = load_config(environ={"VOICEBUS__LIMITS__JOURNAL_DIR": str(tmp_path),
                                  "VOICEBUS__ENDPOINTS__STT_BACKEND_PORT": str(free_port()),
                                  "VOICEBUS__ENDPOINTS__TTS_BACKEND_PORT": str(free_port()),
                                  "VOICEBUS__ENDPOINTS__STT_METRICS_PORT": "0",
                                  "VOICEBUS__ENDPOINTS__TTS_METRICS_PORT": "0", **env})
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


def test_a_job_beyond_what_may_wait_for_a_model_manager_is_answered_at_once(tmp_path):
    """No model manager and max_queue_size jobs already waiting: the next hears `overloaded`
    now, with a retry hint, not a timeout."""
    with agent_in_thread(TTS, tmp_path, VOICEBUS__BATCH_PROCESSING_CONFIG__MAX_QUEUE_SIZE="1") as sock:
        waiting = zmq.Context.instance().socket(zmq.REQ)
        waiting.setsockopt(zmq.LINGER, 0)
        waiting.connect(sock.getsockopt_string(zmq.LAST_ENDPOINT))
        waiting.send_json({"action": "synthesize", "text": "Hi.", "model_pref": "kokoro-82m",
                           "request_id": "r1"})
        deadline = time.monotonic() + 10  # until r1 waits at the agent for a model manager
        while True:
            sock.send_json({"action": "stats"})
            assert sock.poll(10_000)
            if sock.recv_json()["in_flight"] >= 1:
                break
            assert time.monotonic() < deadline, "r1 never reached the agent"
            time.sleep(0.05)
        started = time.monotonic()
        sock.send_json({"action": "synthesize", "text": "Hi.", "request_id": "r2"})
        assert sock.poll(10_000)
        reply = sock.recv_json()
        assert reply["error"]["code"] == "overloaded" and reply["request_id"] == "r2"
        assert reply["error"]["retry_after_ms"] and time.monotonic() - started < 2.0
        waiting.close()
