"""One model's queue: its whole requests and the units of its split ones, and which batch
runs next.

No threads, locks or sockets: the worker (scheduler.py) holds its lock around every call,
and time comes from the clock it passes in, so a test drives the queue with a fake one. Of
the engine it calls only what is read off a request (`bucket`, `cost`); `split` runs
before, outside the worker's lock.

Contract
--------
- `add(job, units)` queues a prepared job: whole when it is one unit, else as a split
  (units.py) whose units enter a batch of their kind at a time (`BatchSizes.group_size`). A
  full queue raises `BusError` overloaded with `retry_after_ms`, the time it should take to
  drain; a split request counts as one, however many units it has.
- With unit scheduling, queued work is ordered by expected finish (`BatchSizes.order`); a
  split's units count the long requests of their kind that share the worker, so that they
  take turns. Without it, the queue runs in arrival order.
- `expire()` takes out what is past its deadline and returns what to answer, once each: a
  whole request with `timeout`, a split request at its first expired unit with that unit's
  cause ("part 2 of 4 failed: ..."), its other units out of the queue.
- `next_batch(idle_since, incoming, cap)` is the batch due now, if any: no larger than
  what memory allows (`cap`) nor than lets the most urgent job make its target.
  `seconds_until_due` is how long the worker may sleep: until a batch can be due, or the
  soonest deadline.
- `unit_done(ref, outcome, waited_s, run)` records one unit's outcome: a `Joined` when it
  was the split's last, a `Failed` at its first failure (its other units leave the queue),
  else None, and the split's next units are queued.
- `cancel(job_ids)` drops jobs (a split: its queued units) unanswered; `drain()` empties the
  queue and returns every request, for the shutdown answers.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import replace
from typing import Any

from model_manager.batch_sizes import BatchSizes
from model_manager.batcher import Batch, BatchPolicy, DynamicBatcher, QueueFull
from model_manager.cost_model import CostModel
from model_manager.engines.base import Engine
from model_manager.errors import OVERLOADED, TIMEOUT, BusError
from model_manager.jobs import Clock, Job, Outcome
from model_manager.units import BatchRun, Failed, Joined, SplitBook, UnitRef


class ModelQueue:
    """The queued work of one model's worker (see the module docstring)."""

    def __init__(self, engine: Engine, policy: BatchPolicy, dynamic_batching: bool, clock: Clock,
                 cost_model: CostModel | None = None) -> None:
        self.engine = engine
        self.batcher: DynamicBatcher[Job] = DynamicBatcher(policy)
        self.splits: SplitBook[Job] = SplitBook()
        self.sizes = BatchSizes(policy, dynamic_batching, cost_model, width=engine.batch_width)
        self._clock = clock

    def __len__(self) -> int:
        return len(self.batcher)

    def refresh(self) -> None:
        """Choose the next batches' sizes and give the batcher the matching policy."""
        self.batcher.policy = self.sizes.refresh()
        self.batcher.group_size = self._group_size if self.sizes.chooses else None

    def _group_size(self, key: Hashable) -> int:
        splitting = any(parent.key == key for parent in self.splits.parents())
        return self.sizes.group_size(key, self._clock(), splitting)

    # --- in --------------------------------------------------------------------------------

    def add(self, job: Job, units: list[Any]) -> None:
        job.bucket = self.engine.bucket(job.request)
        self.sizes.queued(job)
        now = self._clock()
        try:
            if len(units) > 1:
                self._open_split(job, units, now)
            else:
                self.batcher.add(job, job.key, now, job.priority, order=self.sizes.order(job, now))
                self.sizes.whole_arrived(now)
        except QueueFull as exc:
            message = f"{self.engine.name}: queue is full ({exc}); retry later"
            retry_ms = self.sizes.drain_estimate_ms(self.batcher.queued())
            raise BusError(OVERLOADED, message, retry_after_ms=retry_ms) from None

    def _open_split(self, job: Job, units: list[Any], now: float) -> None:
        if len(self.batcher) >= self.batcher.policy.max_queue_size:  # one request, however many units
            raise QueueFull(f"{len(self.batcher)} requests already queued")
        self._release(self.splits.open(job, units), now)

    def _release(self, split: int, now: float) -> None:
        """Queue the split's next units: a batch of their kind."""
        parent = self.splits.parent(split)
        if parent is None:
            return
        room = self.batcher.batch_size(parent.key) if self.batcher.policy.enabled else 1
        # Long requests of one kind share the worker: each unit's expected finish counts one
        # unit of each of them, so that they take turns with each other and with short
        # requests, instead of one after another ahead of them.
        sharing = sum(p.key == parent.key for p in self.splits.parents())
        for ref, request in self.splits.release(split, room):
            unit = replace(parent, request=request, cost=self.engine.cost(request),
                           bucket=self.engine.bucket(request), prepare_s=0.0, unit=ref)
            self.batcher.add(unit, unit.key, now, unit.priority, order=self.sizes.order(unit, now, sharing),
                             admitted=True)

    # --- out -------------------------------------------------------------------------------

    def expire(self) -> list[tuple[Job, BusError]]:
        """Take out what is past its deadline; the requests to answer, and with what."""
        now = self._clock()
        answers = []
        for job in self.batcher.remove(lambda j: j.deadline <= now):
            expired = BusError(TIMEOUT, "request expired in the queue before it could run")
            if job.unit is None:
                answers.append((job, expired))
            elif (failed := self._fail_split(job.unit, expired)) is not None:
                answers.append((failed.parent, failed.error))
        return answers

    def next_batch(self, idle_since: float | None, incoming: int, cap: Callable[[int], int]
                   ) -> Batch[Job] | None:
        """The batch due now, if any. `idle_since`: when the worker last finished a batch,
        None while it runs one; `incoming`: jobs on their way (they hold the fast path);
        `cap(n)`: how many of n items memory allows (asked with dynamic batching only)."""
        now = self._clock()
        limit = self.batcher.policy.max_batch_size
        if self.sizes.dynamic_batching:
            limit = self.sizes.limit(self.batcher.queued(), now, cap(limit))
        return self.batcher.next_batch(now, limit=limit, idle_since=idle_since, incoming=incoming)

    def seconds_until_due(self, idle_since: float | None, incoming: int) -> float | None:
        """How long until a batch can be due or a queued job expires; None: nothing queued."""
        now = self._clock()
        wait = self.batcher.seconds_until_due(now, idle_since, incoming)
        deadlines = [j.deadline for j in self.batcher.queued()]
        if deadlines:
            soonest = max(0.0, min(deadlines) - now)
            wait = soonest if wait is None else min(wait, soonest)
        return wait

    def unit_done(self, ref: UnitRef, outcome: Outcome, waited_s: float, run: BatchRun
                  ) -> Joined[Job] | Failed[Job] | None:
        if isinstance(outcome, BusError):
            return self._fail_split(ref, outcome)
        joined = self.splits.completed(ref, outcome, waited_s, run)
        if joined is None:
            self._release(ref.split, self._clock())
        return joined

    def _fail_split(self, ref: UnitRef, error: BusError) -> Failed[Job] | None:
        """Close a split at its first failed unit and take its other units out of the queue."""
        failed = self.splits.failed(ref, error)
        if failed is not None:
            self.batcher.remove(lambda j: j.unit is not None and j.unit.split == ref.split)
        return failed

    def cancel(self, job_ids: set[str]) -> int:
        """Drop these jobs unanswered; how many requests were dropped."""
        removed = self.batcher.remove(lambda j: j.job_id in job_ids)
        splits = self.splits.cancel(lambda parent: parent.job_id in job_ids)
        return sum(j.unit is None for j in removed) + len(splits)

    def drain(self) -> list[Job]:
        """Empty the queue: every request in it, to answer (a split request once)."""
        return [job for job in self.batcher.drain() if job.unit is None] + self.splits.drain()
