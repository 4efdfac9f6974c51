"""Engines' `prepare` off the model manager's socket thread: `InOrder` as pure logic, then a real
ModelManagerAgent on a real socket with a stand-in engine whose `prepare` waits for the test
(what Whisper's speech detection does to the socket thread under load, made deterministic)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

import pytest
import zmq
from conftest import free_port, wait_until
from test_heartbeat import Backend, Manager, handled, results

from model_manager import link_protocol
from model_manager.agent import ModelManagerAgent
from model_manager.config import parse_config
from model_manager.engines.base import Engine, Request
from model_manager.engines.whisper.result import Transcript
from model_manager.errors import INVALID_FIELD, BusError
from model_manager.preparing import InOrder


def test_in_order_releases_each_lane_in_arrival_order():
    order: InOrder[str, int] = InOrder()
    for key in ("a1", "a2", "a3"):
        order.add("a", key)
    order.add("b", "b1")
    assert order.complete("a3", 3) == []  # waits for a1 and a2
    assert order.complete("b1", 1) == [("b1", 1)]  # another lane does not wait for lane a
    assert order.complete("a1", 1) == [("a1", 1)]
    assert order.complete("a2", 2) == [("a2", 2), ("a3", 3)]
    assert len(order) == 0


def test_in_order_cancel_drops_a_job_and_holds_no_later_one_back():
    order: InOrder[str, int] = InOrder()
    for key in ("x", "y", "z"):
        order.add("lane", key)
    assert order.complete("y", 2) == []
    assert order.cancel({"x"}) == [("y", 2)]  # x's leaving releases y
    assert order.complete("x", 1) == []  # a cancelled job's late value is dropped
    assert "z" in order and order.cancel({"z"}) == [] and len(order) == 0


class SlowPrepareEngine(Engine):
    """`prepare` of an item with "wait" blocks until `gate` is set (with "wait": "early", until
    `early_gate` is); "bad" fails as a client error."""

    task = "stt"
    name = "slow-prepare"
    num_parameters = 1
    device = "cpu"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.early_gate = threading.Event()
        self.ran: list[str] = []
        self.batch_sizes: list[int] = []
        self.prepared: list[str] = []  # the "x" of each item whose prepare has returned

    def prepare(self, fields: Request) -> Request:
        if fields.get("bad"):
            raise BusError(INVALID_FIELD, "bad item")
        if fields.get("wait"):
            assert (self.early_gate if fields["wait"] == "early" else self.gate).wait(30)
        self.prepared.append(fields["x"])
        return fields

    def batch_key(self, request: Request) -> str:
        return "k"

    def run_batch(self, requests: Sequence[Request]) -> list[Transcript]:
        self.ran.extend(r["x"] for r in requests)
        self.batch_sizes.append(len(requests))
        return [Transcript(text=r["x"], language="en") for r in requests]


def start_manager(batch: dict) -> Iterator[Manager]:
    port = free_port()
    config = parse_config({
        "endpoints": {"metrics_port": 0, "monitor_port": 0},
        "model_manager": {"agents": [f"tcp://127.0.0.1:{port}"]},
        "batch_processing_config": {"dynamic_batching": False, **batch},
    })
    engine = SlowPrepareEngine()
    agent = ModelManagerAgent(config, engines=[engine], context=zmq.Context())
    stop = threading.Event()
    thread = threading.Thread(target=agent.serve, args=(stop,), daemon=True)
    thread.start()
    yield Manager(agent, engine, f"tcp://127.0.0.1:{port}")  # type: ignore[arg-type]
    engine.gate.set()
    engine.early_gate.set()
    stop.set()
    thread.join(30)


@pytest.fixture
def manager() -> Iterator[Manager]:
    yield from start_manager({"max_batch_size": 1, "min_batch_size": 1})


def infer(job_id: str, **fields: object) -> dict:
    return {"type": "infer", "job_id": job_id, "task": "stt", "request": {"x": job_id, **fields},
            "timeout_ms": 30_000}


def test_a_slow_prepare_does_not_hold_up_the_socket_and_jobs_keep_their_order(manager):
    sock = Backend(manager.address)
    try:
        sock.send(infer("slow", wait=True))
        sock.send(infer("fast"))
        started = time.monotonic()
        sock.send({"type": "stats", "job_id": "probe"})
        answer = sock.receive(2.0)
        while isinstance(answer, link_protocol.Heartbeat):
            answer = sock.receive(2.0)
        assert isinstance(answer, dict) and answer["type"] == "stats", "the socket thread is stuck in prepare"
        assert time.monotonic() - started < 1.0
        wait_until(lambda: "fast" in manager.engine.prepared, 30, '"fast" prepared')
        time.sleep(0.3)  # time for "fast" to run, were it not held back
        assert manager.engine.ran == []  # "fast" waits for "slow", which arrived first
        sock.send(link_protocol.Heartbeat())  # still alive, as an agent heartbeats every second
        manager.engine.gate.set()
        assert results(sock, wait_s=30, until="fast") == ["slow", "fast"]
        assert manager.engine.ran == ["slow", "fast"]
    finally:
        sock.close()


def test_a_job_cancelled_while_it_is_prepared_never_runs_and_prepare_errors_are_answered(manager):
    sock = Backend(manager.address)
    try:
        sock.send(infer("cancelled", wait=True))
        sock.send(infer("behind"))
        sock.send({"type": "cancel", "job_ids": ["cancelled"]})
        assert results(sock, wait_s=30, until="behind") == ["behind"]  # not held back by it
        manager.engine.gate.set()
        sock.send(infer("bad", bad=True))
        deadline = time.monotonic() + 30
        reply: dict = {}
        while time.monotonic() < deadline:
            message = sock.receive(deadline - time.monotonic())
            if isinstance(message, dict) and message.get("job_id") == "bad":
                reply = message
                break
        assert reply["job_id"] == "bad" and reply["ok"] is False
        assert reply["error"]["code"] == INVALID_FIELD
        wait_until(lambda: "cancelled" in manager.engine.prepared, 30, '"cancelled" prepared')
        time.sleep(0.3)  # time for it to run, were it not dropped
        assert manager.engine.ran == ["behind"]  # the cancelled job never ran, and was not answered
        assert manager.agent.models.workers["slow-prepare"].snapshot()["errors"] == {INVALID_FIELD: 1}
    finally:
        sock.close()


def test_a_burst_still_being_prepared_is_not_split_by_the_idle_fast_path():
    # An idle worker runs a lone job at once; but this one's company is right behind it, in
    # the prepare pool: it must wait for them and run with them.
    batch = {"max_batch_size": 4, "min_batch_size": 3, "max_batch_wait_ms": 5000, "lone_request_wait_ms": 2}
    started = start_manager(batch)
    manager = next(started)
    sock = Backend(manager.address)
    try:
        sock.send(infer("first", wait="early"))
        for job_id in ("second", "third"):
            sock.send(infer(job_id, wait=True))
        handled(sock)  # all three are in the prepare pool
        manager.engine.early_gate.set()  # "first" reaches the idle worker; the others are preparing
        worker = manager.agent.models.workers["slow-prepare"]
        wait_until(lambda: worker.queue_depth() or manager.engine.ran, 30, '"first" handed to the worker')
        time.sleep(0.3)  # time for it to run alone, were it let
        assert manager.engine.ran == []  # it did not run alone
        manager.engine.gate.set()
        assert results(sock, wait_s=30, until="third") == ["first", "second", "third"]
        assert manager.engine.batch_sizes == [3]
    finally:
        sock.close()
        next(started, None)


def test_the_stt_intake_imports_the_resampler_in_the_background_at_start():
    """scipy.signal takes 1-3 s to import under load: never on the agent's socket thread, with
    the first resampled request, where it would outlast the model manager's liveness window."""
    import subprocess
    import sys

    probe = (
        "import sys, zmq\n"
        "from agents.intake import Intake\n"
        "from agents.services import STT\n"
        "from model_manager.config import load_config\n"
        "assert 'scipy.signal' not in sys.modules  # start-up does not wait for it\n"
        "Intake(zmq.Context(), STT, load_config().limits)\n"
        "import threading\n"
        "for thread in threading.enumerate():\n"
        "    if thread.name == 'intake-load':\n"
        "        thread.join(60)\n"
        "print('scipy.signal' in sys.modules)  # before any request resampled\n"
    )
    from conftest import ROOT

    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
