"""Lanes: the long lane's priority, and a worker whose long lane is busy still answering short
requests at once. The engine is the splitting stand-in of test_unit_scheduling, so this is
scheduling logic; the bus end to end is test_bus_units.py."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from test_unit_scheduling import Clock, Part, SplittingEngine

from model_manager.batcher import BatchPolicy
from model_manager.jobs import Job, Timed
from model_manager.lanes import (
    LONG,
    LONG_LANE_NICE,
    LONG_LANE_PATIENCE,
    LONG_LANE_PATIENCE_MIN_S,
    SHORT,
    LaneBook,
    build_at_low_priority,
    thread_nice,
    wants_long_lane,
)
from model_manager.scheduler import ModelWorker


def test_auto_means_a_long_lane_on_a_cpu_only():
    assert wants_long_lane("auto", "cpu") and not wants_long_lane("auto", "cuda")
    assert wants_long_lane(True, "cuda") and not wants_long_lane(False, "cpu")


def test_what_is_built_at_low_priority_and_the_threads_it_starts_keep_it():
    seen: dict[str, int] = {}

    def build() -> str:
        seen["builder"] = thread_nice()
        child = threading.Thread(target=lambda: seen.__setitem__("child", thread_nice()))
        child.start()
        child.join()
        return "engine"

    before = thread_nice()
    assert build_at_low_priority(build) == "engine"
    assert seen == {"builder": LONG_LANE_NICE, "child": LONG_LANE_NICE}
    assert thread_nice() == before  # the caller's own priority is untouched


def test_a_failed_build_raises_on_the_callers_thread():
    def build() -> None:
        raise FileNotFoundError("no weights here")

    with pytest.raises(FileNotFoundError, match="no weights here"):
        build_at_low_priority(build)


def test_the_book_says_when_each_lane_went_idle():
    book = LaneBook((SHORT, LONG))
    assert book.idle_since(SHORT) == float("-inf")
    book.started(SHORT, 1.0)
    book.started(LONG, 1.5, alone_s=0.5)
    assert book.idle_since(SHORT) is None and book.idle_since(LONG) is None
    book.finished(SHORT, 2.0)
    assert book.idle_since(SHORT) == 2.0 and book.idle_since(LONG) is None


def test_a_long_batch_is_overdue_past_its_patience_and_never_sooner_than_the_floor():
    book = LaneBook((SHORT, LONG))
    book.started(LONG, 0.0, alone_s=0.1)  # 30 x 0.1 s is under the floor
    assert not book.short_lane_waits(LONG_LANE_PATIENCE_MIN_S - 0.01)
    assert book.short_lane_waits(LONG_LANE_PATIENCE_MIN_S)
    book.finished(LONG, 40.0)
    assert not book.short_lane_waits(1e9)
    book.started(LONG, 0.0, alone_s=2.0)
    assert not book.short_lane_waits(LONG_LANE_PATIENCE * 2.0 - 0.01)
    assert book.short_lane_waits(LONG_LANE_PATIENCE * 2.0)


def test_a_long_batch_measures_its_size_only_when_the_short_lane_ran_nothing_meanwhile():
    book = LaneBook((SHORT, LONG))
    quiet = book.measure_long()
    assert quiet()
    book.started(SHORT, 0.0)
    assert not quiet()  # a short batch started while it ran
    assert not book.measure_long()()  # one is running as it starts
    book.finished(SHORT, 1.0)
    assert book.measure_long()()


class GatedEngine(SplittingEngine):
    """Units wait for `gate` (a long window that takes as long as the test wants)."""

    def __init__(self, clock: Clock, gate: threading.Event) -> None:
        super().__init__(clock)
        self.gate = gate
        self.running_unit = threading.Event()
        self.nice: set[int] = set()  # the priorities of the threads it ran on

    def run_batch(self, requests: Any) -> Any:
        self.nice.add(thread_nice())
        if any(isinstance(r, Part) for r in requests):
            self.running_unit.set()
            assert self.gate.wait(30)
        return super().run_batch(requests)


class Lanes:
    """A started worker with a long lane, on gated stand-in engines and an explicit clock."""

    def __init__(self) -> None:
        self.clock, self.gate = Clock(), threading.Event()
        self.short = GatedEngine(self.clock, self.gate)
        self.long = GatedEngine(self.clock, self.gate)
        self.answers: dict[str, Any] = {}
        self.done = threading.Condition()
        policy = BatchPolicy(max_batch_size=1, min_batch_size=1)
        self.worker = ModelWorker(self.short, policy, self._on_done, dynamic_batching=False,
                                  clock=self.clock, long_lane=self.long)

    def _on_done(self, job: Job, outcome: Any) -> None:
        with self.done:
            self.answers[job.job_id] = outcome
            self.done.notify_all()

    def submit(self, name: str, parts: int = 1) -> None:
        request = (name, parts)
        self.worker.submit(Job(job_id=name, model="splitting", request=request,
                               key=self.short.batch_key(request), deadline=1e12,
                               cost=self.short.cost(request)))

    def answered(self, name: str, within_s: float = 10) -> bool:
        with self.done:
            return self.done.wait_for(lambda: name in self.answers, within_s)


def test_a_short_request_is_answered_while_the_long_lane_runs_a_unit():
    lanes = Lanes()
    lanes.worker.start()
    try:
        lanes.submit("L", 2)
        lanes.submit("S")
        assert lanes.long.running_unit.wait(10)
        assert lanes.answered("S")  # while L's first unit holds its lane
        assert "L" not in lanes.answers
        lanes.gate.set()
        assert lanes.answered("L")
    finally:
        lanes.gate.set()
        lanes.worker.stop(timeout=5)
    assert isinstance(lanes.answers["L"], Timed) and lanes.answers["L"].result.text == "L0 L1"
    assert lanes.long.calls == [["L0"], ["L1"]] and lanes.short.calls == [["S"]]
    assert lanes.long.nice == {LONG_LANE_NICE} and lanes.short.nice == {thread_nice()}


def test_the_short_lane_waits_for_a_long_batch_starved_past_its_patience():
    lanes = Lanes()
    lanes.worker.start()
    try:
        lanes.submit("L", 2)
        assert lanes.long.running_unit.wait(10)
        lanes.clock.now += LONG_LANE_PATIENCE_MIN_S + 1  # nothing measured: the patience's floor
        lanes.submit("S")
        assert not lanes.answered("S", within_s=0.3)  # it waits for the overdue unit ...
        lanes.gate.set()
        assert lanes.answered("S") and lanes.answered("L")
    finally:
        lanes.gate.set()
        lanes.worker.stop(timeout=5)
    assert lanes.short.calls == [["S"]] and lanes.long.calls[0] == ["L0"]
    assert lanes.worker.snapshot()["short_lane_yields"] >= 1  # the explicit clock may make L1 overdue too
