"""How large a model's next batch may be, and in what order its queue runs: pure.

The model's queue (model_queue.py) asks this policy; it holds no clock, thread, lock or
engine: the caller passes `now` and what is queued, and the worker holds its lock around
every call.

Contract
--------
- `policy` and `dynamic_batching` are the worker's settings, as configured; `width` is the
  engine's `batch_width`, the most requests it runs at once. `refresh()`
  chooses each bucket's size for its next batch from the bucket's `CostModel` (requests of
  one bucket cost alike per unit: one Whisper window length) and returns the policy the
  batcher is to apply, never past `width`. With dynamic batching off, or batching disabled,
  the configured sizes apply as they are; `chooses` says whether per-group sizes (`group_size`) apply at all.
- `group_size(key, now, splitting)` is the batch size of `key`'s group: its bucket's chosen
  size. While requests that run whole came within SHORT_WORK_MEMORY_S and units of split
  requests join the group (`splitting`), it is a slice of that: the largest batch measured to
  take at most UNIT_SLICE times one item alone, so a short request that arrives meanwhile is
  not held behind a long batch of units.
- `limit(queued, now, cap)` is the most items the next batch may take: `cap` (what memory
  allows), no more than lets the most urgent job (earliest target, else deadline) finish by
  then. A job that would miss its target even alone no longer sizes batches: shrinking them
  could not save it.
- `order(job, now, sharing)` is where a job goes among the queued jobs of its priority: with
  unit scheduling, its expected finish (now, plus what it takes alone, `sharing` times over;
  its target when that is sooner); without it None (its arrival).
- `drain_estimate_ms(queued)` is about how long until the queue has room (for `retry_after_ms`).
- `observe(jobs, seconds)` learns from a batch that ran without a fallback; `warm_up_sizes`
  and `warmed_up` are what the start-up warm-up measures and what it leaves.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import replace
from typing import Any

from model_manager.batcher import BatchPolicy
from model_manager.cost_model import CostModel, SizeChoice
from model_manager.jobs import Job

# Seconds. While requests that run whole came this recently, a split request's units are
# released in slices (see `group_size`): short requests come in bursts (a user speaks, is
# answered and speaks again), so one seen lately means more are on their way.
SHORT_WORK_MEMORY_S = 10.0
#: A batch of units takes at most this many times one unit alone while short requests are
#: about: a short request that arrives while it runs waits for no more than that.
UNIT_SLICE = 1.5


class BatchSizes:
    """The batch-size policy of one model's worker (see the module docstring)."""

    def __init__(self, policy: BatchPolicy, dynamic_batching: bool = True,
                 cost_model: CostModel | None = None, width: int | None = None) -> None:
        self.policy = policy  # as configured; `refresh` returns the effective one
        self.dynamic_batching = dynamic_batching
        #: The engine's `batch_width`: with dynamic batching, no batch is larger.
        self.width = width
        self._template = cost_model or CostModel()
        #: One cost model per bucket; None: requests in no bucket (engines with one kind).
        self.costs: dict[Hashable, CostModel] = {None: self._template}
        self.choice = SizeChoice(policy.max_batch_size, "configured max_batch_size")
        self.choices: dict[Hashable, SizeChoice] = {}
        self._key_buckets: dict[Hashable, Hashable] = {}
        self._whole_seen = float("-inf")  # when a request that runs whole last arrived
        self.last_bucket: Hashable = None  # what `choice` and the snapshot's sizes describe

    def cost(self, bucket: Hashable = None) -> CostModel:
        """The bucket's cost model; a bucket first seen starts from the template's numbers."""
        if bucket not in self.costs:
            self.costs[bucket] = self._template.for_bucket()
        return self.costs[bucket]

    @property
    def top(self) -> int:
        """The largest batch dynamic batching may choose: the configured maximum, and no more
        than the engine can run at once."""
        top = self.policy.max_batch_size
        return top if self.width is None else max(1, min(top, self.width))

    @property
    def chooses(self) -> bool:
        """Whether batch sizes come from the cost models (else the configured ones apply)."""
        return self.dynamic_batching and self.policy.enabled

    def set_policy(self, policy: BatchPolicy, dynamic_batching: bool) -> None:
        self.policy = policy
        self.dynamic_batching = dynamic_batching

    # --- what arrived and what ran -------------------------------------------------------

    def queued(self, job: Job) -> None:
        """A job (with its bucket set) is being queued: its key's group is of its bucket."""
        self._key_buckets[job.key] = job.bucket

    def whole_arrived(self, now: float) -> None:
        """A request that runs whole was queued: short work is about (see `group_size`)."""
        self._whole_seen = now

    def observe(self, jobs: Sequence[Job], seconds: float) -> None:
        """A batch of `jobs` (one bucket) ran cleanly in `seconds`: it measures its size."""
        self.last_bucket = jobs[0].bucket
        self.cost(self.last_bucket).observe(len(jobs), sum(j.cost for j in jobs), seconds)

    def warm_up_sizes(self, max_items: int | None = None) -> list[int]:
        """The batch sizes a warm-up measures, in order (CostModel.warm_up_sizes)."""
        top = self.top if self.chooses else self.policy.max_batch_size
        return self._template.warm_up_sizes(min(top, max_items or top))

    def warmed_up(self, bucket: Hashable) -> None:
        """The warm-up measured `bucket`: buckets it did not reach start from its numbers."""
        self._template, self.last_bucket = self.cost(bucket), bucket

    # --- sizes ---------------------------------------------------------------------------

    def refresh(self) -> BatchPolicy:
        """Pick the batch size for the next batch; the policy the batcher is to apply.

        Dynamic: each bucket's cost model's best size, for the groups of that bucket. The
        configured min_batch_size still decides when an idle worker stops waiting, but never
        above the chosen size: when batching does not pay (size 1), nothing waits at all.
        """
        p = self.policy
        if self.chooses:
            top = self.top
            self.choices = {b: self.cost(b).choose(1, top) for b in self.costs}
            self.choice = self.choices[self.last_bucket]
            return p if top == p.max_batch_size else replace(
                p, max_batch_size=top, min_batch_size=min(p.min_batch_size, top))
        self.choices = {}
        self.choice = SizeChoice(p.max_batch_size, "dynamic_batching is off: configured sizes")
        size = self.choice.size
        return replace(p, max_batch_size=size, min_batch_size=min(p.min_batch_size, size))

    def group_size(self, key: Hashable, now: float, splitting: bool) -> int:
        """The batch size of `key`'s group: its bucket's chosen size; for a group that units
        of split requests join (`splitting`) while short requests are about, a slice of it."""
        bucket = self._key_buckets.get(key)
        if bucket not in self.choices:  # first seen since the last refresh
            self.choices[bucket] = self.cost(bucket).choose(1, self.top)
        size = self.choices[bucket].size
        if size > 1 and now - self._whole_seen < SHORT_WORK_MEMORY_S and splitting:
            return self._slice(bucket, size)
        return size

    def _slice(self, bucket: Hashable, size: int) -> int:
        """The largest batch, up to `size`, measured to take at most UNIT_SLICE times one item
        alone: on a GPU, where batching is nearly free, the batch; on a CPU, where a batch of
        n takes n times as long, one. A long request alone (no short request within
        SHORT_WORK_MEMORY_S) still runs at the best measured throughput."""
        cost = self.cost(bucket)
        one = cost.predict(1, 1.0)
        if one is None:
            return 1
        return next((n for n in range(size, 1, -1)
                     if (took := cost.predict(n, float(n))) is not None and took <= UNIT_SLICE * one), 1)

    def limit(self, queued: Sequence[Job], now: float, cap: int) -> int:
        """The most items the next batch may take, at most `cap`: small enough to finish
        before the most urgent job's target (its deadline when it has none). A live final
        must not wait for a batch of partials that the engine runs slower than the final
        alone (a CPU does). Under overload, when every target is missed, batches of one would
        only cut throughput when the queue is longest, so hopeless jobs do not count."""
        savable = [j for j in queued if self.can_make_target(j, now)]
        if not savable:
            return cap
        urgent = min(savable, key=Job.due_by)
        units = sum(j.cost for j in queued) / len(queued)
        return min(cap, self.cost(urgent.bucket).largest_within(urgent.due_by() - now, units, cap))

    def can_make_target(self, job: Job, now: float) -> bool:
        alone = self.cost(job.bucket).predict(1, job.cost)
        return alone is None or job.due_by() - now >= alone

    # --- order and waits -----------------------------------------------------------------

    def order(self, job: Job, now: float, sharing: int = 1) -> float | None:
        """Where `job` goes in the queue among jobs of its priority: with unit scheduling, its
        expected finish (ready now, plus what it takes alone, `sharing` times over; its target
        when sooner); else None, its arrival."""
        if not self.policy.unit_scheduling:
            return None
        expected = now + sharing * self.solo_seconds(job)
        return expected if job.target is None else min(expected, job.target)

    def solo_seconds(self, job: Job) -> float:
        """About how long `job` takes alone: its bucket's measured rate alone, else the best
        rate measured for any of its buckets at any size (cost units are comparable across
        buckets: encoder seconds, characters); 0 before anything was measured."""
        alone = self.cost(job.bucket).predict(1, job.cost)
        if alone is not None:
            return alone
        top = self.policy.max_batch_size
        rates = [r for cost in self.costs.values() for size in range(1, top + 1)
                 if (r := cost.throughput(size)) is not None]
        return job.cost / max(rates) if rates else 0.0

    def drain_estimate_ms(self, queued: Sequence[Job]) -> int:
        """About how long until the queue has room: its cost at the current batch size's
        measured throughput, or a second when nothing has been measured yet."""
        units = sum(j.cost for j in queued)
        rate = self.cost(self.last_bucket).throughput(self.choice.size)
        return int(1000 * units / rate) if rate else 1000

    def snapshot(self) -> dict[str, Any]:
        """The chosen size and why, and the measured throughput by size (per bucket too)."""
        buckets = {str(b): {"chosen_batch_size": c.size, "throughput_by_size": self.cost(b).snapshot()}
                   for b, c in self.choices.items() if b is not None}
        return {"chosen_batch_size": self.choice.size, "choice_reason": self.choice.reason,
                "throughput_by_size": self.cost(self.last_bucket).snapshot(), "buckets": buckets}
