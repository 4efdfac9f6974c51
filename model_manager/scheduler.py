"""One worker thread per loaded model: it pulls due batches from a `DynamicBatcher` and runs them.

This is where the pure batching policy meets time, threads and failure:
- Expired requests (past their deadline) are answered with a timeout and never run.
- A batch that fails with out-of-memory is split in halves and retried, down to single items.
- A batch that fails any other way is retried one item at a time, so one bad item fails
  alone and the rest succeed.
- Every job ends in exactly one `on_done(job, result_or_error)` call. Nothing is dropped and
  no placeholder output is ever made up for a failed item.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model_manager.batcher import Batch, BatchPolicy, DynamicBatcher, QueueFull
from model_manager.engines.base import Engine, Request, Result
from model_manager.errors import (
    INFERENCE_FAILED,
    OUT_OF_MEMORY,
    OVERLOADED,
    SHUTTING_DOWN,
    TIMEOUT,
    BusError,
)
from model_manager.memory import MemoryBudget

log = logging.getLogger(__name__)

Outcome = Result | BusError
Clock = Callable[[], float]

# How many recent timings the percentiles in `stats()` are computed over.
STATS_WINDOW = 1000


@dataclass
class Job:
    job_id: str
    model: str
    request: Request
    key: Hashable
    deadline: float  # monotonic seconds
    priority: int = 0
    #: Opaque to the worker: where the answer goes (the model manager stores the agent identity).
    reply_to: Any = None
    cost: float = 1.0


@dataclass
class WorkerStats:
    batches: int = 0
    requests: int = 0
    succeeded: int = 0
    batch_sizes: Counter[int] = field(default_factory=Counter)
    fire_reasons: Counter[str] = field(default_factory=Counter)
    fallbacks: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    queue_wait_s: deque[float] = field(default_factory=lambda: deque(maxlen=STATS_WINDOW))
    compute_s: deque[float] = field(default_factory=lambda: deque(maxlen=STATS_WINDOW))


class ModelWorker:
    def __init__(
        self,
        engine: Engine,
        policy: BatchPolicy,
        on_done: Callable[[Job, Outcome], None],
        dynamic_batching: bool = True,
        clock: Clock = time.monotonic,
    ) -> None:
        self.engine = engine
        self.batcher: DynamicBatcher[Job] = DynamicBatcher(policy)
        self.dynamic_batching = dynamic_batching
        self.memory = MemoryBudget(engine.device)
        self.stats = WorkerStats()
        self._on_done = on_done
        self._clock = clock
        self._cond = threading.Condition()
        self._stopping = False
        self._busy = False
        self._thread = threading.Thread(target=self._loop, name=f"worker-{engine.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._stopping:
                raise BusError(SHUTTING_DOWN, "the model manager is shutting down")
            try:
                self.batcher.add(job, job.key, self._clock(), job.priority)
            except QueueFull as exc:
                message = f"{self.engine.name}: queue is full ({exc}); retry later"
                raise BusError(OVERLOADED, message) from None
            self._cond.notify()

    def cancel(self, job_ids: set[str]) -> int:
        """Drop queued jobs whose client has gone; they are not answered."""
        with self._cond:
            return len(self.batcher.remove(lambda j: j.job_id in job_ids))

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float | None = None) -> None:
        """Stop taking work: queued jobs get a shutting_down error, the running batch finishes."""
        with self._cond:
            self._stopping = True
            left = self.batcher.drain()
            self._cond.notify_all()
        for job in left:
            self._finish(job, BusError(SHUTTING_DOWN, "the model manager shut down before this request ran"))
        if self._thread.ident is not None:  # started
            self._thread.join(timeout)

    @property
    def busy(self) -> bool:
        return self._busy

    def queue_depth(self) -> int:
        return len(self.batcher)

    # --- the worker thread -------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                batch = self._next_batch_locked()
                if batch is None:
                    return
                self._busy = True
            try:
                self._run(batch)
            finally:
                self._busy = False

    def _next_batch_locked(self) -> Batch[Job] | None:
        while not self._stopping:
            now = self._clock()
            for job in self.batcher.remove(lambda j, now=now: j.deadline <= now):
                self._finish(job, BusError(TIMEOUT, "request expired in the queue before it could run"))
            limit = self.batcher.policy.max_batch_size
            if self.dynamic_batching:
                limit = self.memory.max_items(limit)
            batch = self.batcher.next_batch(now, limit=limit)
            if batch is not None:
                return batch
            wait = self.batcher.seconds_until_due(now)
            deadlines = [j.deadline for j in self.batcher.queued()]
            if deadlines:
                soonest = max(0.0, min(deadlines) - now)
                wait = soonest if wait is None else min(wait, soonest)
            self._cond.wait(timeout=wait)
        return None

    def _run(self, batch: Batch[Job]) -> None:
        s = self.stats
        s.batches += 1
        s.batch_sizes[len(batch.items)] += 1
        s.fire_reasons[batch.reason] += 1
        s.queue_wait_s.extend(batch.waited_s)
        log.info("batch start model=%s size=%d reason=%s", self.engine.name, len(batch.items), batch.reason)
        outcomes = self._run_resilient(batch.items)
        ok = sum(not isinstance(o, BusError) for o in outcomes)
        log.info("batch completed model=%s %d/%d ok", self.engine.name, ok, len(outcomes))
        for job, outcome in zip(batch.items, outcomes, strict=True):
            self._finish(job, outcome)

    def _run_resilient(self, jobs: list[Job]) -> list[Outcome]:
        try:
            return list(self._run_engine(jobs))
        except BusError as exc:
            if exc.code == OUT_OF_MEMORY and len(jobs) > 1:
                self.stats.fallbacks["oom_split"] += 1
                log.warning(
                    "batch fallback model=%s: out of memory at %d items, splitting",
                    self.engine.name,
                    len(jobs),
                )
                half = len(jobs) // 2
                return self._run_resilient(jobs[:half]) + self._run_resilient(jobs[half:])
            if len(jobs) == 1:
                return [exc]
            failure: Exception = exc
        except Exception as exc:  # engine bugs and bad items must not take the worker down
            if len(jobs) == 1:
                log.exception("inference failed model=%s", self.engine.name)
                return [BusError(INFERENCE_FAILED, f"{type(exc).__name__}: {exc}")]
            failure = exc
        self.stats.fallbacks["one_by_one"] += 1
        log.warning(
            "batch fallback model=%s: %s; running %d items one by one", self.engine.name, failure, len(jobs)
        )
        return [self._run_resilient([job])[0] for job in jobs]

    def _run_engine(self, jobs: list[Job]) -> list[Result]:
        started = time.perf_counter()
        self.memory.begin()
        results = self.engine.run_batch([j.request for j in jobs])
        self.memory.end(len(jobs))
        self.stats.compute_s.append(time.perf_counter() - started)
        if len(results) != len(jobs):
            raise RuntimeError(f"engine returned {len(results)} results for {len(jobs)} requests")
        return results

    def _finish(self, job: Job, outcome: Outcome) -> None:
        self.stats.requests += 1
        if isinstance(outcome, BusError):
            self.stats.errors[outcome.code] += 1
        else:
            self.stats.succeeded += 1
        try:
            self._on_done(job, outcome)
        except Exception:  # a broken reply path must not kill the worker thread
            log.exception("on_done failed for job %s", job.job_id)

    def snapshot(self) -> dict[str, Any]:
        s = self.stats
        return {
            "model": self.engine.name,
            "task": self.engine.task,
            "device": self.engine.device,
            "batches": s.batches,
            "requests": s.requests,
            "succeeded": s.succeeded,
            "batch_size_histogram": {str(k): v for k, v in sorted(s.batch_sizes.items())},
            "max_batch_size_seen": max(s.batch_sizes, default=0),
            "fire_reasons": dict(s.fire_reasons),
            "fallbacks": dict(s.fallbacks),
            "errors": dict(s.errors),
            "queue_depth": self.queue_depth(),
            "busy": self._busy,
            "queue_wait_ms": percentiles(s.queue_wait_s),
            "compute_ms": percentiles(s.compute_s),
        }


def percentiles(values: deque[float] | list[float]) -> dict[str, float]:
    if not values:
        return {}
    ms = np.asarray(values) * 1000.0
    return {f"p{q}": round(float(np.percentile(ms, q)), 2) for q in (50, 95, 99)}
