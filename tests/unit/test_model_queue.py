"""One model's queue without its worker: no threads, a fake clock, and the splitting stand-in
engine of test_unit_scheduling (only its `bucket`, `cost` and `split` are used here)."""

from __future__ import annotations

import pytest
from test_unit_scheduling import Clock, SplittingEngine, Text

from model_manager.batcher import BatchPolicy
from model_manager.errors import OVERLOADED, TIMEOUT, BusError
from model_manager.jobs import Job
from model_manager.lanes import LONG, SHORT, Lane
from model_manager.model_queue import ModelQueue
from model_manager.units import BatchRun, Failed, Joined


class Queue:
    def __init__(self, long_lane: bool = False, **policy: object) -> None:
        self.clock = Clock()
        self.engine = SplittingEngine(self.clock)
        settings = {"max_batch_size": 2, "min_batch_size": 1, "max_queue_size": 4, **policy}
        self.queue = ModelQueue(self.engine, BatchPolicy(**settings), False, clock=self.clock,
                                long_lane=long_lane)
        self.queue.refresh()

    def add(self, name: str, parts: int = 1, deadline: float = 1e12) -> None:
        request = (name, parts)
        job = Job(job_id=name, model="splitting", request=request, key=self.engine.batch_key(request),
                  deadline=deadline, cost=self.engine.cost(request))
        self.queue.add(job, self.engine.split(request))

    def batch(self, lane: Lane | None = None) -> list[Job]:
        """The jobs of the lane's batch due now (the worker idle, nothing on its way); [] if
        none. No lane: the short lane's, else the long lane's, as `ModelWorker.run_next`."""
        for each in (SHORT, LONG) if lane is None else (lane,):
            batch = self.queue.next_batch(each, idle_since=float("-inf"), incoming=0, cap=lambda n: n)
            if batch is not None:
                return batch.items
        return []

    def take(self, lane: Lane | None = None) -> list[str]:
        return [SplittingEngine.label(j.request) for j in self.batch(lane)]


def test_a_split_request_queues_a_batch_of_units_at_a_time_and_joins_once():
    q = Queue()
    q.add("L", parts=3)
    assert len(q.queue) == 2  # a batch of its kind
    first, second = (j.unit for j in q.batch())
    assert first is not None and second is not None and (first.index, second.index) == (0, 1)
    run = BatchRun(0, 1.0, 2)
    assert q.queue.unit_done(first, Text("L0"), 0.0, run) is None
    assert len(q.queue) == 1  # the third unit is queued: a batch of two in flight again
    assert q.queue.unit_done(second, Text("L1"), 0.0, run) is None
    assert q.take() == ["L2"]


def test_what_expires_is_answered_once_and_a_split_leaves_the_queue_whole():
    q = Queue()
    q.add("S", deadline=1.0)
    q.add("L", parts=4, deadline=1.0)
    q.add("T", deadline=5.0)
    q.clock.now = 1.0
    answers = {job.job_id: error for job, error in q.queue.expire()}
    assert set(answers) == {"S", "L"} and all(e.code == TIMEOUT for e in answers.values())
    assert answers["L"].message.startswith("part 1 of 4 failed: request expired")
    assert q.take() == ["T"] and len(q.queue) == 0


def test_a_failed_unit_takes_its_split_out_and_a_late_unit_changes_nothing():
    q = Queue()
    q.add("L", parts=4)
    first, second = (j.unit for j in q.batch())
    assert first is not None and second is not None
    failed = q.queue.unit_done(first, BusError("inference_failed", "cannot read"), 0.0, BatchRun(0, 1.0, 2))
    assert isinstance(failed, Failed) and failed.error.message == "part 1 of 4 failed: cannot read"
    assert q.queue.unit_done(second, Text("L1"), 0.0, BatchRun(0, 1.0, 2)) is None
    assert len(q.queue) == 0


def test_the_last_unit_gives_the_joined_request():
    q = Queue(max_batch_size=1)
    q.add("L", parts=2)
    outcomes = []
    for index in range(2):
        (unit,) = (j.unit for j in q.batch())
        assert unit is not None
        outcomes.append(q.queue.unit_done(unit, Text(f"L{index}"), 0.5, BatchRun(index, 1.0, 1)))
    assert outcomes[0] is None and isinstance(outcomes[1], Joined)
    assert outcomes[1].results == [Text("L0"), Text("L1")] and outcomes[1].queue_s == 1.0


def test_a_full_queue_refuses_with_overloaded_and_a_time_to_come_back():
    q = Queue(max_queue_size=2)
    q.add("a")
    q.add("b")
    with pytest.raises(BusError) as refused:
        q.add("c")
    assert refused.value.code == OVERLOADED and refused.value.retry_after_ms == 1000


def test_cancel_and_drain_give_each_request_once():
    q = Queue()
    q.add("S")
    q.add("L", parts=4)
    q.add("T")
    assert q.queue.cancel({"L"}) == 1 and len(q.queue) == 2
    assert sorted(job.job_id for job in q.queue.drain()) == ["S", "T"]
    assert len(q.queue) == 0


# --- with a long lane ------------------------------------------------------------------------


def test_with_a_long_lane_units_and_whole_requests_never_share_a_lane():
    q = Queue(long_lane=True, max_batch_size=4, max_queue_size=8)
    q.add("L", parts=3)
    q.add("S")
    q.add("T")
    assert q.take(LONG) == ["L0", "L1", "L2"]
    assert q.take(SHORT) == ["S", "T"]
    assert q.take(SHORT) == [] and q.take(LONG) == []


def test_a_short_request_is_due_on_its_lane_while_the_long_lane_runs():
    q = Queue(long_lane=True)
    q.add("L", parts=6)
    assert q.take(LONG) == ["L0", "L1"]
    q.add("S")  # L's units are running, and its next ones queued behind them in their lane
    assert q.take(SHORT) == ["S"]
    assert q.take(SHORT) == []


def test_expiry_cancel_and_drain_reach_the_long_lane():
    q = Queue(long_lane=True, max_queue_size=8)
    q.add("L", parts=4, deadline=1.0)
    q.add("M", parts=2)
    q.add("S")
    q.clock.now = 1.0
    answers = {job.job_id: error for job, error in q.queue.expire()}
    assert set(answers) == {"L"} and answers["L"].code == TIMEOUT
    assert q.queue.cancel({"M"}) == 1
    assert q.take(LONG) == []
    assert [j.job_id for j in q.queue.drain()] == ["S"]


def test_a_full_queue_counts_the_units_of_both_lanes():
    q = Queue(long_lane=True, max_batch_size=2, max_queue_size=3)
    q.add("L", parts=4)  # two units queued
    q.add("S")
    with pytest.raises(BusError) as refused:
        q.add("T")
    assert refused.value.code == OVERLOADED
