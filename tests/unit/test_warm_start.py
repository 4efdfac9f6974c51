"""The first batches after start-up: the warm-up gives the cost model enough to choose at once.

Scheduling logic only: a stand-in engine whose batches take a scripted time on an explicit
clock, so what the warm-up measures, and so the sizes chosen, are exact.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from model_manager.batcher import BatchPolicy
from model_manager.engines.base import Engine, Request
from model_manager.jobs import Job
from model_manager.scheduler import ModelWorker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class TimedEngine(Engine):
    """Each batch advances `clock` by `latency(size)`; requests carry their bucket."""

    task = "stt"
    name = "timed"
    num_parameters = 1
    device = "cpu"

    def __init__(self, clock: Clock, latency: Callable[[int], float], warm_bucket: str = "short") -> None:
        self.clock = clock
        self.latency = latency
        self.warm_bucket = warm_bucket
        self.calls: list[tuple[str, int]] = []

    def batch_key(self, request: Request) -> str:
        return request["bucket"]

    def bucket(self, request: Request) -> str:
        return request["bucket"]

    def cost(self, request: Request) -> float:
        return 2.0 if request["bucket"] == "short" else 6.0

    def warmup_requests(self, count: int) -> list[Request]:
        return [{"x": -1, "bucket": self.warm_bucket} for _ in range(count)]

    def run_batch(self, requests: Sequence[Request]) -> list[Any]:
        self.calls.append((requests[0]["bucket"], len(requests)))
        scale = 1.0 if requests[0]["bucket"] == "short" else 3.0  # a longer window costs more
        self.clock.now += scale * self.latency(len(requests))
        return [{"y": r["x"]} for r in requests]


def cpu_like(n: int) -> float:
    """Batching gains little past 4 (per item: 0.100, 0.087, 0.080, 0.079 s): the best size is
    4, the smallest within the cost model's tolerance of the best throughput."""
    return 0.1 + 0.073 * (n - 1)


def burst_after_warm_up(latency: Callable[[int], float], bucket: str = "short", count: int = 16,
                        warm: bool = True) -> list[int]:
    """The batch sizes that run `count` requests of `bucket`, all queued at once right after
    start-up (with the warm-up, unless `warm` is false)."""
    clock = Clock()
    engine = TimedEngine(clock, latency)
    answered = threading.Event()
    done: list[object] = []

    def on_done(job: Job, outcome: object) -> None:
        done.append(outcome)
        if len(done) == count:
            answered.set()

    worker = ModelWorker(engine, BatchPolicy(max_batch_size=8, min_batch_size=1), on_done, clock=clock)
    if warm:
        worker.warm_up()
    engine.calls.clear()
    for x in range(count):
        worker.submit(Job(job_id=str(x), model="timed", request={"x": x, "bucket": bucket}, key=bucket,
                          deadline=1e12))
    worker.start()
    assert answered.wait(10), f"{len(done)} of {count} answered"
    worker.stop(5)
    assert all(b == bucket for b, _ in engine.calls)
    return [size for _, size in engine.calls]


def test_the_warm_up_measures_every_size_as_often_as_the_cost_model_needs():
    clock = Clock()
    engine = TimedEngine(clock, cpu_like)
    worker = ModelWorker(engine, BatchPolicy(max_batch_size=8), lambda job, outcome: None, clock=clock)
    worker.warm_up()
    # An unmeasured first call, then each size twice (min_observations), up and then down.
    assert [size for _, size in engine.calls] == [1, 1, 2, 4, 8, 8, 4, 2, 1]
    cost = worker.queue.sizes.costs["short"]
    assert {s: cost.observations(s) for s in (1, 2, 4, 8)} == {1: 2, 2: 2, 4: 2, 8: 2}
    worker.start()
    snapshot = worker.snapshot()  # the warm bucket's choice, not that of a bucket with no numbers
    worker.stop(5)
    assert snapshot["chosen_batch_size"] == 4 and "best measured throughput" in snapshot["choice_reason"]


def test_a_burst_right_after_start_up_runs_at_the_best_size_at_once():
    # Before: one warm-up observation per size, two needed, so the burst ran as 1, 2, 4, 8, 1.
    assert burst_after_warm_up(cpu_like) == [4, 4, 4, 4]
    assert burst_after_warm_up(lambda n: 1.0 + 0.1 * n) == [8, 8]  # batching pays: as large as allowed


def test_a_bucket_the_warm_up_did_not_reach_starts_from_its_numbers():
    # The warm-up ran "short" requests; a burst of "long" ones (3x the time per batch, same
    # curve) needs no exploration either.
    assert burst_after_warm_up(cpu_like, bucket="long") == [4, 4, 4, 4]


def test_without_a_warm_up_the_cost_model_explores_first():
    # The contrast: what live traffic pays when nothing was measured before it.
    assert burst_after_warm_up(cpu_like, warm=False)[:4] == [1, 1, 2, 2]
