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
from model_manager.lanes import LONG_LANE_NICE, build_at_low_priority, thread_nice, wants_long_lane
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


def test_a_short_request_is_answered_while_the_long_lane_runs_a_unit():
    clock, gate = Clock(), threading.Event()
    short_engine, long_engine = GatedEngine(clock, gate), GatedEngine(clock, gate)
    answers: dict[str, Any] = {}
    done = threading.Condition()

    def on_done(job: Job, outcome: Any) -> None:
        with done:
            answers[job.job_id] = outcome
            done.notify_all()

    policy = BatchPolicy(max_batch_size=1, min_batch_size=1)
    worker = ModelWorker(short_engine, policy, on_done, dynamic_batching=False, clock=clock,
                         long_lane=long_engine)
    worker.start()
    try:
        for name, parts in (("L", 2), ("S", 1)):
            request = (name, parts)
            worker.submit(Job(job_id=name, model="splitting", request=request,
                              key=short_engine.batch_key(request), deadline=1e12,
                              cost=short_engine.cost(request)))
        assert long_engine.running_unit.wait(10)
        with done:
            assert done.wait_for(lambda: "S" in answers, 10)  # while L's first unit holds its lane
        assert "L" not in answers
        gate.set()
        with done:
            assert done.wait_for(lambda: "L" in answers, 10)
    finally:
        gate.set()
        worker.stop(timeout=5)
    assert isinstance(answers["L"], Timed) and answers["L"].result.text == "L0 L1"
    assert long_engine.calls == [["L0"], ["L1"]] and short_engine.calls == [["S"]]
    assert long_engine.nice == {LONG_LANE_NICE} and short_engine.nice == {thread_nice()}
