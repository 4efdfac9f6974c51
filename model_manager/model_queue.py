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
- Lanes (lanes.py): with `long_lane`, the units of split requests queue apart from the
  requests that run whole, and each lane's worker takes batches of its own lane only
  (`next_batch(lane, ...)`), so the two never batch together and run side by side. Without
  it, one queue holds both, and units are released in slices while short requests are about
  (`BatchSizes.group_size`).
- `expire()` takes out what is past its deadline and returns what to answer, once each: a
  whole request with `timeout`, a split request at its first expired unit with that unit's
  cause ("part 2 of 4 failed: ..."), its other units out of the queue.
- `next_batch(lane, idle_since, incoming, cap)` is the lane's batch due now, if any: no larger than
  what memory allows (`cap`) nor than lets the most urgent job make its target.
  `seconds_until_due(lane, ...)` is how long the lane's worker may sleep: until a batch can
  be due, or the soonest deadline.
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
from model_manager.lanes import LONG, Lane
from model_manager.units import BatchRun, Failed, Joined, SplitBook, UnitRef


class ModelQueue:
    """The queued work of one model's worker (see the module docstring)."""

    def __init__(self, engine: Engine, policy: BatchPolicy, dynamic_batching: bool, clock: Clock,
                 cost_model: CostModel | None = None, long_lane: bool = False) -> None:
        self.engine = engine
        #: The requests that run whole, and the units of split ones when there is no long lane.
        self.batcher: DynamicBatcher[Job] = DynamicBatcher(policy)
        #: With a long lane, the units of split requests.
        self.long_batcher: DynamicBatcher[Job] | None = DynamicBatcher(policy) if long_lane else None
        self.splits: SplitBook[Job] = SplitBook()
        self.sizes = BatchSizes(policy, dynamic_batching, cost_model, width=engine.batch_width)
        self._clock = clock

    def __len__(self) -> int:
        return sum(len(b) for b in self._batchers())

    def _batchers(self) -> list[DynamicBatcher[Job]]:
        return [self.batcher] if self.long_batcher is None else [self.batcher, self.long_batcher]

    def _lane(self, lane: Lane) -> DynamicBatcher[Job] | None:
        """The lane's batcher; None for the long lane of a queue without one."""
        return self.long_batcher if lane == LONG else self.batcher

    @property
    def _units(self) -> DynamicBatcher[Job]:
        """Where the units of split requests queue."""
        return self.batcher if self.long_batcher is None else self.long_batcher

    def queued(self) -> list[Job]:
        return [job for batcher in self._batchers() for job in batcher.queued()]

    def _remove(self, predicate: Callable[[Job], bool]) -> list[Job]:
        """Take every queued job for which `predicate` is true out of both lanes."""
        return [job for batcher in self._batchers() for job in batcher.remove(predicate)]

    def refresh(self) -> None:
        """Choose the next batches' sizes and give the batchers the matching policy."""
        policy = self.sizes.refresh()
        for batcher in self._batchers():
            batcher.policy = policy
            batcher.group_size = self._group_size if self.sizes.chooses else None

    def _group_size(self, key: Hashable) -> int:
        # Units are sliced only where short requests would wait behind them: in a shared queue.
        splitting = self.long_batcher is None and any(parent.key == key for parent in self.splits.parents())
        return self.sizes.group_size(key, self._clock(), splitting)

    # --- in --------------------------------------------------------------------------------

    def add(self, job: Job, units: list[Any]) -> None:
        job.bucket = self.engine.bucket(job.request)
        self.sizes.queued(job)
        now = self._clock()
        try:
            # A split request counts as one, however many units it has; units already queued
            # count as what they are, work waiting.
            if len(self) >= self.batcher.policy.max_queue_size:
                raise QueueFull(f"{len(self)} requests already queued")
            if len(units) > 1:
                self._release(self.splits.open(job, units), now)
            else:
                self.batcher.add(job, job.key, now, job.priority, order=self.sizes.order(job, now))
                self.sizes.whole_arrived(now)
        except QueueFull as exc:
            message = f"{self.engine.name}: queue is full ({exc}); retry later"
            retry_ms = self.sizes.drain_estimate_ms(self.queued())
            raise BusError(OVERLOADED, message, retry_after_ms=retry_ms) from None

    def _release(self, split: int, now: float) -> None:
        """Queue the split's next units: a batch of their kind."""
        parent = self.splits.parent(split)
        if parent is None:
            return
        units = self._units
        room = units.batch_size(parent.key) if units.policy.enabled else 1
        # Long requests of one kind share the worker: each unit's expected finish counts one
        # unit of each of them, so that they take turns with each other and with short
        # requests, instead of one after another ahead of them.
        sharing = sum(p.key == parent.key for p in self.splits.parents())
        for ref, request in self.splits.release(split, room):
            unit = replace(parent, request=request, cost=self.engine.cost(request),
                           bucket=self.engine.bucket(request), prepare_s=0.0, unit=ref)
            units.add(unit, unit.key, now, unit.priority, order=self.sizes.order(unit, now, sharing),
                      admitted=True)

    # --- out -------------------------------------------------------------------------------

    def expire(self) -> list[tuple[Job, BusError]]:
        """Take out what is past its deadline; the requests to answer, and with what."""
        now = self._clock()
        answers = []
        for job in self._remove(lambda j: j.deadline <= now):
            expired = BusError(TIMEOUT, "request expired in the queue before it could run")
            if job.unit is None:
                answers.append((job, expired))
            elif (failed := self._fail_split(job.unit, expired)) is not None:
                answers.append((failed.parent, failed.error))
        return answers

    def next_batch(self, lane: Lane, idle_since: float | None, incoming: int, cap: Callable[[int], int]
                   ) -> Batch[Job] | None:
        """The lane's batch due now, if any. `idle_since`: when the lane's worker last
        finished a batch, None while it runs one; `incoming`: jobs on their way (they hold
        the fast path of the short lane: they are being prepared, so they run whole);
        `cap(n)`: how many of n items memory allows (asked with dynamic batching only)."""
        batcher = self._lane(lane)
        if batcher is None:
            return None
        now = self._clock()
        limit = batcher.policy.max_batch_size
        if self.sizes.dynamic_batching:
            limit = self.sizes.limit(batcher.queued(), now, cap(limit))
        return batcher.next_batch(now, limit=limit, idle_since=idle_since,
                                  incoming=0 if lane == LONG else incoming)

    def seconds_until_due(self, lane: Lane, idle_since: float | None, incoming: int) -> float | None:
        """How long until a batch of the lane can be due or one of its jobs expires; None:
        nothing queued there."""
        batcher = self._lane(lane)
        if batcher is None:
            return None
        now = self._clock()
        wait = batcher.seconds_until_due(now, idle_since, 0 if lane == LONG else incoming)
        deadlines = [j.deadline for j in batcher.queued()]
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
            self._units.remove(lambda j: j.unit is not None and j.unit.split == ref.split)
        return failed

    def cancel(self, job_ids: set[str]) -> int:
        """Drop these jobs unanswered; how many requests were dropped."""
        removed = self._remove(lambda j: j.job_id in job_ids)
        splits = self.splits.cancel(lambda parent: parent.job_id in job_ids)
        return sum(j.unit is None for j in removed) + len(splits)

    def drain(self) -> list[Job]:
        """Empty the queue: every request in it, to answer (a split request once)."""
        return [job for job in self._remove(lambda _job: True) if job.unit is None] + self.splits.drain()
