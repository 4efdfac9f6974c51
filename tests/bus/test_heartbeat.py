"""The model manager's side of the heartbeat: a resent job runs once, and the queued jobs of an
agent that stopped heartbeating are dropped. A real ModelManagerAgent connecting out to the
test's backend socket, with a stand-in engine whose batches wait for the test to let them
finish."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest
import zmq
from conftest import free_port, wait_until

from model_manager import link_protocol
from model_manager.agent import ModelManagerAgent
from model_manager.config import parse_config
from model_manager.engines.base import Engine, Request
from model_manager.engines.whisper.result import Transcript


class GatedEngine(Engine):
    """Echoes each request's "x"; every batch waits until `gate` is set, and is counted."""

    task = "stt"
    name = "gated"
    num_parameters = 1
    device = "cpu"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.ran: list[str] = []

    def batch_key(self, request: Request) -> str:
        return "k"

    def run_batch(self, requests: Sequence[Request]) -> list[Transcript]:
        self.gate.wait(30)
        self.ran.extend(r["x"] for r in requests)
        return [Transcript(text=r["x"], language="en") for r in requests]


@dataclass
class Manager:
    agent: ModelManagerAgent
    engine: GatedEngine
    address: str  # the test's backend ROUTER, which the manager connects out to


@pytest.fixture
def manager() -> Iterator[Manager]:
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    config = parse_config(
        {
            "endpoints": {"metrics_port": 0, "monitor_port": 0},
            "model_manager": {"agents": [address]},
            # One job per batch, so that the first runs (and waits) while the rest stay queued.
            "batch_processing_config": {"max_batch_size": 1, "min_batch_size": 1, "dynamic_batching": False},
        }
    )
    engine = GatedEngine()
    agent = ModelManagerAgent(config, engines=[engine], context=zmq.Context())
    stop = threading.Event()
    thread = threading.Thread(target=agent.serve, args=(stop,), daemon=True)
    thread.start()
    yield Manager(agent, engine, address)
    engine.gate.set()
    stop.set()
    thread.join(30)


class Backend:
    """The test's side of the backend: a ROUTER as an agent binds, which takes the manager's
    READY and then talks to it by its identity."""

    def __init__(self, address: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(address)
        assert self.sock.poll(30_000), "no READY from the model manager"
        self.identity, *frames = self.sock.recv_multipart()
        assert isinstance(link_protocol.decode(frames), link_protocol.Ready)
        self.send(link_protocol.Heartbeat())  # the acknowledgement

    def send(self, message: dict | link_protocol.ControlMessage) -> None:
        self.sock.send_multipart([self.identity, *link_protocol.encode(message)])

    def receive(self, timeout_s: float) -> dict | link_protocol.ControlMessage | None:
        if not self.sock.poll(int(timeout_s * 1000)):
            return None
        return link_protocol.decode(self.sock.recv_multipart()[1:])

    def close(self) -> None:
        self.sock.close()


def infer(job_id: str) -> dict:
    return {"type": "infer", "job_id": job_id, "task": "stt", "request": {"x": job_id}, "timeout_ms": 30_000}


def handled(backend: Backend) -> None:
    """Return once the manager has handled every message sent so far: its socket thread
    takes one link's messages in order, so the answer to a `stats` sent last says so."""
    backend.send({"type": "stats", "job_id": "barrier"})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        message = backend.receive(30)
        if isinstance(message, dict) and message["type"] == "stats":
            return
    raise AssertionError("the manager did not answer stats")


def results(backend: Backend, wait_s: float, until: str | None = None) -> list[str]:
    """job_ids of the results that arrive within `wait_s` (or until the one for `until`)."""
    seen: list[str] = []
    deadline = time.monotonic() + wait_s
    while (left := deadline - time.monotonic()) > 0 and until not in seen:
        message = backend.receive(left)
        if isinstance(message, dict) and message["type"] == "result":
            seen.append(message["job_id"])
    return seen


def test_a_job_resent_while_queued_or_running_runs_once(manager):
    sock = Backend(manager.address)
    try:
        for job_id in ("a", "b", "a", "b", "a"):  # as an agent resends after a silence
            sock.send(infer(job_id))
        handled(sock)  # every copy has reached the manager
        worker = manager.agent.models.workers["gated"]
        wait_until(lambda: worker.busy == 1 and worker.queue_depth() == 1, 30, '"a" running, "b" queued')
        manager.engine.gate.set()
        answered = results(sock, wait_s=30, until="b")  # one batch each, in order: "b" comes last
        answered += results(sock, wait_s=1.5)  # and no second answer after them
        assert sorted(answered) == ["a", "b"]
        assert sorted(manager.engine.ran) == ["a", "b"]
    finally:
        sock.close()


def test_the_queued_jobs_of_an_agent_that_stopped_heartbeating_are_dropped(manager, caplog):
    caplog.set_level(logging.WARNING, logger="model_manager.agent")
    sock = Backend(manager.address)
    for job_id in ("running", "queued-1", "queued-2"):
        sock.send(infer(job_id))
    worker = manager.agent.models.workers["gated"]
    # "running" is in the engine, the other two wait behind it
    wait_until(lambda: worker.busy == 1 and worker.queue_depth() == 2, 30, "one job running, two queued")
    sock.close()  # the agent dies: no more heartbeats
    dropped = "is silent; dropped 2 of its queued jobs"
    deadline = time.monotonic() + link_protocol.LIVENESS_S + 30
    # The jobs leave the queue a moment before the warning is logged: wait for both.
    while (worker.queue_depth() or dropped not in caplog.text) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert worker.queue_depth() == 0
    assert dropped in caplog.text
    manager.engine.gate.set()
    wait_until(lambda: manager.engine.ran, 30, "the running batch finished")
    time.sleep(0.5)  # time for a dropped job to run, were it still queued
    assert manager.engine.ran == ["running"]  # the dropped ones never ran for nobody


def test_an_agent_that_keeps_heartbeating_keeps_its_jobs(manager):
    sock = Backend(manager.address)
    try:
        sock.send(infer("running"))
        sock.send(infer("queued"))
        for _ in range(4):  # past the 3-interval limit, with heartbeats
            sock.send(link_protocol.Heartbeat())
            time.sleep(link_protocol.HEARTBEAT_INTERVAL_S)
        assert manager.agent.models.workers["gated"].queue_depth() == 1
        manager.engine.gate.set()
        assert "queued" in results(sock, wait_s=30, until="queued")
    finally:
        sock.close()
