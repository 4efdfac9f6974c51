"""The shutdown policy (agents/shutdown.py) on its own: a real in-flight table, a stand-in
waiting line, an explicit clock."""

from __future__ import annotations

from typing import Any

from agents.inflight import InFlight, InFlightJob
from agents.shutdown import SERVED_WHILE_STOPPING, Shutdown
from agents.sinks import ReplySink
from model_manager import protocol
from model_manager.errors import BusError


class Recorder(ReplySink):
    def __init__(self, owner: bytes | None) -> None:
        self.owner = owner
        self.entries: list[dict[str, Any]] = []

    def deliver(self, entry: dict[str, Any]) -> None:
        self.entries.append(entry)


class Line:
    """The backend's waiting line: the jobs no model manager holds yet."""

    def __init__(self) -> None:
        self.jobs: list[str] = []
        self.forgotten: list[str] = []

    def waiting(self) -> list[str]:
        return list(self.jobs)

    def forget(self, job_id: str) -> None:
        self.jobs.remove(job_id)
        self.forgotten.append(job_id)


def add(inflight: InFlight, job_id: str, owner: bytes | None) -> Recorder:
    sink = Recorder(owner)
    inflight.add(InFlightJob(job_id, {}, 100.0, sink, {"request_id": f"r-{job_id}"}))
    return sink


def fail(job: InFlightJob, error: BusError) -> None:
    """As Work.fail renders it for a client."""
    job.sink.deliver(protocol.error_reply(error, job.fields.get("request_id")))


def codes(sink: Recorder) -> list[str]:
    return [entry["error"]["code"] for entry in sink.entries]


def test_a_stopping_agent_admits_only_actions_that_start_no_new_work():
    shutdown = Shutdown(InFlight(), Line(), fail)
    assert shutdown.admits("transcribe") and shutdown.admits("health")
    shutdown.begin(0.0)
    assert not shutdown.admits("transcribe") and not shutdown.admits("stream_open")
    assert all(shutdown.admits(action) for action in SERVED_WHILE_STOPPING)


def test_waiting_work_is_refused_every_turn_and_journaled_work_stays():
    inflight, line = InFlight(), Line()
    shutdown = Shutdown(inflight, line, fail)
    waiting = add(inflight, "w", b"client")
    journaled = add(inflight, "q", None)
    running = add(inflight, "run", b"client")  # a model manager holds it: not in the line
    line.jobs = ["w", "q"]
    shutdown.begin(0.0)
    shutdown.refuse_waiting_work()
    assert codes(waiting) == ["shutting_down"] and waiting.entries[0]["request_id"] == "r-w"
    assert line.forgotten == ["w"] and inflight.get("w") is None
    assert journaled.entries == [] and inflight.get("q") is not None and line.jobs == ["q"]
    assert running.entries == [] and inflight.get("run") is not None
    # A draining model manager gives its job back after the stop: the next turn refuses it.
    line.jobs.append("run")
    shutdown.refuse_waiting_work()
    assert codes(running) == ["shutting_down"] and inflight.get("run") is None


def test_the_loop_ends_when_no_client_waits_or_the_grace_time_is_up():
    shutdown = Shutdown(InFlight(), Line(), fail, grace_s=30.0)
    assert not shutdown.over(0.0, clients_waiting=False)  # not stopping
    shutdown.begin(10.0)
    shutdown.begin(20.0)  # a second stop signal changes nothing
    assert not shutdown.over(39.9, clients_waiting=True)
    assert shutdown.over(40.0, clients_waiting=True)
    assert shutdown.over(11.0, clients_waiting=False)


def test_at_the_end_every_waiting_client_hears_shutting_down():
    inflight = InFlight()
    shutdown = Shutdown(inflight, Line(), fail)
    client = add(inflight, "a", b"client")
    journaled = add(inflight, "q", None)
    told: list[BusError] = []
    shutdown.answer_everyone([told.append])
    assert codes(client) == ["shutting_down"] and inflight.get("a") is None
    assert journaled.entries == [] and inflight.get("q") is not None
    assert [error.code for error in told] == ["shutting_down"]
