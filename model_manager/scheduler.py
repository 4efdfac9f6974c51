"""Worker threads per loaded model: they pull due batches from a `DynamicBatcher` and run them.

This is where the pure batching policy meets time, threads and failure:
- With dynamic batching, the batch size comes from a `CostModel` that measures every batch
  (and a short warm-up), capped by free memory and by the earliest queued deadline. Without
  it, the configured sizes apply as they are. Requests of one engine can differ in cost per
  item (Whisper's window lengths): the engine's `bucket` says which kind a request is, and
  each bucket has its own cost model and its own best size.
- A lone request reaching an idle worker runs at once (see batcher: fast_path), unless more
  jobs for this model are still being prepared (`expect` / `expected_left`): they would
  have run alone one after another.
- With `unit_scheduling` (the default), a request the engine splits (`Engine.split`: a long
  recording's 30 s windows, a long text's pieces) runs as units (units.py): they enter the
  queue a batch at a time and batch with other requests of their kind (while short requests
  are about, in batches measured to take at most UNIT_SLICE times one), and the request is
  joined and answered once, when its last unit is done or at its first failure. Queued work
  is then ordered by expected finish: when it became ready to run (a whole request: its
  arrival; a unit: its release) plus what it is measured to take alone (a unit: times the
  long requests of its kind sharing the worker), or its target when that is sooner. A short
  request that arrives while a long one runs thus goes before that one's next units, and a
  long request still gets a batch in whenever nothing queued is expected to finish sooner
  (it cannot starve). Without it, the queue runs in arrival order.
- Expired requests (past their deadline) are answered with a timeout and never run.
- A batch that fails with out-of-memory is split in halves and retried, down to single items.
- A batch that fails any other way is retried one item at a time, so one bad item fails
  alone and the rest succeed.
- Every job ends in exactly one `on_done(job, result_or_error)` call; a result is `Timed`:
  the engine's, with where the request's time went. Nothing is dropped and no placeholder
  output is ever made up for a failed item.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from model_manager.batcher import Batch, BatchPolicy, DynamicBatcher, QueueFull
from model_manager.cost_model import CostModel, SizeChoice
from model_manager.engines.base import Engine, Result
from model_manager.errors import (
    INFERENCE_FAILED,
    OUT_OF_MEMORY,
    OVERLOADED,
    SHUTTING_DOWN,
    TIMEOUT,
    BusError,
)
from model_manager.memory import MemoryBudget
from model_manager.percentiles import percentiles_ms
from model_manager.units import BatchRun, Failed, SplitBook, UnitRef

log = logging.getLogger(__name__)

Outcome = Result | BusError
Clock = Callable[[], float]

# How many recent timings the percentiles in `stats()` are computed over.
STATS_WINDOW = 1000
# Bucket bounds of the lifetime histograms, which the Prometheus exporter serves.
# Seconds. Queue waits range from the fast path's few ms to a full queue's tens of seconds.
QUEUE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Seconds. One engine call: tens of ms for a short TTS sentence, seconds for a large STT batch.
COMPUTE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# Seconds. While requests that run whole came this recently, a split request's units are
# released in slices (see `_unit_room_locked`): short requests come in bursts (a user speaks,
# is answered and speaks again), so one seen lately means more are on their way.
SHORT_WORK_MEMORY_S = 10.0
#: A batch of units takes at most this many times one unit alone while short requests are
#: about: a short request that arrives while it runs waits for no more than that.
UNIT_SLICE = 1.5
# Items. Every size up to 8 (the default max_batch_size) has a bucket of its own, so the
# histogram is exact for the default configuration; larger limits get coarser buckets.
BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 48, 64, 128)


@dataclass(frozen=True)
class Timing:
    """Where one request's time went: its reply's `timing` (docs/protocol.md)."""

    prepare_ms: float
    queue_ms: float
    compute_ms: float
    batch_size: int


@dataclass(frozen=True)
class Timed:
    """An engine's result for one job, with its `Timing`: what `on_done` gets on success."""

    result: Result
    timing: Timing

    def to_wire(self) -> dict[str, Any]:
        return {**self.result.to_wire(), "timing": asdict(self.timing)}


@dataclass
class Job:
    job_id: str
    model: str
    request: Any  # the engine's own request type: opaque here
    key: Hashable
    deadline: float  # monotonic seconds
    priority: int = 0
    #: By when the client would like the answer (monotonic seconds; None: the deadline). Soft:
    #: it sizes batches (no batch longer than the earliest target allows), it expires nothing.
    target: float | None = None
    #: Opaque to the worker: where the answer goes (the model manager stores the agent identity).
    reply_to: Any = None
    cost: float = 1.0
    #: Set by the worker from `engine.bucket`: which cost model learns from this job.
    bucket: Hashable = None
    #: Seconds the engine's `prepare` took on it (checks, Whisper's speech detection).
    prepare_s: float = 0.0
    #: Set by the worker on the jobs it makes for the units of a split request: which unit.
    #: A unit job shares its request's job_id, key, deadline, priority and target.
    unit: UnitRef | None = None

    def due_by(self) -> float:
        return self.deadline if self.target is None else min(self.target, self.deadline)


@dataclass
class Histogram:
    """Observations counted in fixed buckets over a process's life (Prometheus style)."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)  # per bucket, then one for beyond the last
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def copy(self) -> Histogram:
        return Histogram(self.bounds, list(self.counts), self.total)


@dataclass
class WorkerStats:
    """The one record of what one model's worker has done: every batch, engine call,
    fallback and answered request. Written by its worker threads; `stats` (recent
    percentiles) and the Prometheus exporter (lifetime counters and histograms) both read
    it, on their own threads. Every access holds `lock`; readers take a `copy()`."""

    batches: int = 0
    requests: int = 0
    succeeded: int = 0
    #: Requests that ran as units (see units.py); each is one of `requests`.
    split_requests: int = 0
    batch_sizes: Counter[int] = field(default_factory=Counter)
    fire_reasons: Counter[str] = field(default_factory=Counter)
    fallbacks: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    queue_wait_s: deque[float] = field(default_factory=lambda: deque(maxlen=STATS_WINDOW))
    compute_s: deque[float] = field(default_factory=lambda: deque(maxlen=STATS_WINDOW))
    queue_wait_histogram: Histogram = field(default_factory=lambda: Histogram(QUEUE_BUCKETS))
    compute_histogram: Histogram = field(default_factory=lambda: Histogram(COMPUTE_BUCKETS))
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def batch_started(self, size: int, reason: str, waited_s: Sequence[float]) -> None:
        with self.lock:
            self.batches += 1
            self.batch_sizes[size] += 1
            self.fire_reasons[reason] += 1
            self.queue_wait_s.extend(waited_s)
            for seconds in waited_s:
                self.queue_wait_histogram.observe(seconds)

    def engine_ran(self, seconds: float) -> None:
        with self.lock:
            self.compute_s.append(seconds)
            self.compute_histogram.observe(seconds)

    def split_opened(self) -> None:
        with self.lock:
            self.split_requests += 1

    def fallback(self, reason: str) -> None:
        with self.lock:
            self.fallbacks[reason] += 1

    def request_finished(self, error_code: str | None, refused: bool = False) -> None:
        """One request answered; `refused`: turned away before it was queued (not counted
        among `requests`, which are the ones that reached the queue)."""
        with self.lock:
            if error_code is None:
                self.succeeded += 1
            else:
                self.errors[error_code] += 1
            if not refused:
                self.requests += 1

    def fallback_count(self) -> int:
        with self.lock:
            return sum(self.fallbacks.values())

    def copy(self) -> WorkerStats:
        """A consistent snapshot that no worker thread writes to."""
        with self.lock:
            return WorkerStats(
                self.batches, self.requests, self.succeeded, self.split_requests, Counter(self.batch_sizes),
                Counter(self.fire_reasons), Counter(self.fallbacks), Counter(self.errors),
                deque(self.queue_wait_s, maxlen=STATS_WINDOW), deque(self.compute_s, maxlen=STATS_WINDOW),
                self.queue_wait_histogram.copy(), self.compute_histogram.copy(),
            )


class ModelWorker:
    """Runs one engine's batches on `instances` threads that share one queue.

    More than one instance keeps a second batch in flight while the first one's CPU-side
    pre/post-processing runs; whether that pays is an engine and device question, so it is
    a per-model setting (default 1).
    """

    def __init__(
        self,
        engine: Engine,
        policy: BatchPolicy,
        on_done: Callable[[Job, Outcome], None],
        dynamic_batching: bool = True,
        clock: Clock = time.monotonic,
        instances: int = 1,
        cost_model: CostModel | None = None,
    ) -> None:
        self.engine = engine
        self.policy = policy  # as configured; the batcher's own policy is the effective one
        self.batcher: DynamicBatcher[Job] = DynamicBatcher(policy)
        self.splits: SplitBook[Job] = SplitBook()
        self._batch_numbers = itertools.count()
        self.dynamic_batching = dynamic_batching
        self._template = cost_model or CostModel()
        self.costs: dict[Hashable, CostModel] = {None: self._template}
        self.choice = SizeChoice(policy.max_batch_size, "configured max_batch_size")
        self.choices: dict[Hashable, SizeChoice] = {}
        self._key_buckets: dict[Hashable, Hashable] = {}
        self._idle_since = float("-inf")
        self._incoming = 0  # jobs on their way (being prepared): see expect()
        self._whole_seen = float("-inf")  # when a request that runs whole last arrived
        self._last_bucket: Hashable = None  # what `choice` and the snapshot's sizes describe
        self.memory = MemoryBudget(engine.device)
        self.stats = WorkerStats()
        self._on_done = on_done
        self._clock = clock
        self._cond = threading.Condition()
        self._stopping = False
        self._busy = 0
        self._threads = [
            threading.Thread(target=self._loop, name=f"worker-{engine.name}-{i}", daemon=True)
            for i in range(max(1, instances))
        ]

    @property
    def cost(self) -> CostModel:
        """The cost model of requests in no bucket (engines with one kind of request)."""
        return self.costs[None]

    def _cost(self, bucket: Hashable) -> CostModel:
        if bucket not in self.costs:
            self.costs[bucket] = self._template.for_bucket()
        return self.costs[bucket]

    def start(self) -> None:
        with self._cond:
            self._refresh_choice_locked()
        for thread in self._threads:
            thread.start()

    def reconfigure(self, policy: BatchPolicy, dynamic_batching: bool) -> None:
        """Apply new batching settings at once, without a restart; queued requests stay queued."""
        with self._cond:
            self.policy = policy
            self.dynamic_batching = dynamic_batching
            self._refresh_choice_locked()
            self._cond.notify_all()

    def warm_up(self, max_items: int | None = None) -> None:
        """Measure each candidate batch size on synthetic input before serving, as often as
        the cost model needs to choose (CostModel.warm_up_sizes), so the first live batches
        exploit this device's numbers instead of exploring while requests queue. Buckets the
        warm-up did not reach start from its numbers (CostModel.for_bucket)."""
        top = min(self.policy.max_batch_size, max_items or self.policy.max_batch_size)
        sizes = self._template.warm_up_sizes(top)
        requests = self.engine.warmup_requests(max(sizes))
        if not requests:
            return
        self.engine.run_batch(requests[:1])  # first-call allocations are not batching cost
        bucket = self.engine.bucket(requests[0])
        with self._cond:
            cost = self._cost(bucket)
        for size in sizes:
            batch = requests[:size]
            started = self._clock()
            self.engine.run_batch(batch)
            elapsed = self._clock() - started
            with self._cond:
                cost.observe(size, sum(self.engine.cost(r) for r in batch), elapsed)
        with self._cond:
            self._template, self._last_bucket = cost, bucket
        log.info("warm-up model=%s throughput_by_size=%s", self.engine.name, cost.snapshot())

    def expect(self) -> None:
        """A job for this model is being prepared: hold the idle fast path until it arrives."""
        with self._cond:
            self._incoming += 1

    def expected_left(self) -> None:
        """An expected job was queued (submit first), answered or dropped."""
        with self._cond:
            self._incoming = max(0, self._incoming - 1)
            self._cond.notify()

    def submit(self, job: Job) -> None:
        units = self._units_of(job)  # before the lock: the engine may plan for a few ms
        with self._cond:
            if self._stopping:
                raise BusError(SHUTTING_DOWN, "the model manager is shutting down")
            job.bucket = self.engine.bucket(job.request)
            self._key_buckets[job.key] = job.bucket
            now = self._clock()
            try:
                if len(units) > 1:
                    self._open_split_locked(job, units, now)
                else:
                    self.batcher.add(job, job.key, now, job.priority, order=self._order_locked(job, now))
                    self._whole_seen = now
            except QueueFull as exc:
                message = f"{self.engine.name}: queue is full ({exc}); retry later"
                error = BusError(OVERLOADED, message, retry_after_ms=self._drain_estimate_ms_locked())
                self.count_refused(error)
                raise error from None
            self._cond.notify()

    def _units_of(self, job: Job) -> list[Any]:
        """The units `job` runs as: its engine's `split`, or the request whole when unit
        scheduling is off or the split fails (a bug there must not cost the request)."""
        if not self.policy.unit_scheduling:
            return [job.request]
        try:
            return list(self.engine.split(job.request))
        except Exception:
            log.exception("split failed model=%s job=%s; it runs whole", self.engine.name, job.job_id)
            return [job.request]

    def _open_split_locked(self, job: Job, units: list[Any], now: float) -> None:
        if len(self.batcher) >= self.batcher.policy.max_queue_size:  # one request, however many units
            raise QueueFull(f"{len(self.batcher)} requests already queued")
        split = self.splits.open(job, units)
        self.stats.split_opened()
        self._release_locked(split, now)

    def _release_locked(self, split: int, now: float) -> None:
        """Queue the split's next units: a batch of their kind (see `_group_size_locked`)."""
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
            self.batcher.add(unit, unit.key, now, unit.priority, order=self._order_locked(unit, now, sharing),
                             admitted=True)

    def _order_locked(self, job: Job, now: float, sharing: int = 1) -> float | None:
        """Where `job` goes in the queue among jobs of its priority: with unit scheduling, its
        expected finish (ready now, plus what it takes alone, `sharing` times over; its target
        when sooner); else None, its arrival."""
        if not self.policy.unit_scheduling:
            return None
        expected = now + sharing * self._solo_seconds_locked(job)
        return expected if job.target is None else min(expected, job.target)

    def _solo_seconds_locked(self, job: Job) -> float:
        """About how long `job` takes alone: its bucket's measured rate alone, else the best
        rate measured for any of its buckets at any size (cost units are comparable across
        buckets: encoder seconds, characters); 0 before anything was measured."""
        alone = self._cost(job.bucket).predict(1, job.cost)
        if alone is not None:
            return alone
        top = self.policy.max_batch_size
        rates = [r for cost in self.costs.values() for size in range(1, top + 1)
                 if (r := cost.throughput(size)) is not None]
        return job.cost / max(rates) if rates else 0.0

    def count_refused(self, error: BusError) -> None:
        """Count a request refused before it was queued (invalid for this model, queue full)
        with the errors of the ones that ran, so `stats` and the metrics see every failure."""
        self.stats.request_finished(error.code, refused=True)

    def cancel(self, job_ids: set[str]) -> int:
        """Drop queued jobs whose client has gone, and the rest of split ones (a unit that is
        running finishes for nobody); they are not answered. How many requests were dropped."""
        with self._cond:
            removed = self.batcher.remove(lambda j: j.job_id in job_ids)
            splits = self.splits.cancel(lambda parent: parent.job_id in job_ids)
            return sum(j.unit is None for j in removed) + len(splits)

    @property
    def alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def stop(self, timeout: float | None = None) -> None:
        """Stop taking work: queued jobs get a shutting_down error, the running batch finishes."""
        with self._cond:
            self._stopping = True
            left = [job for job in self.batcher.drain() if job.unit is None] + self.splits.drain()
            self._cond.notify_all()
        for job in left:
            self._finish(job, BusError(SHUTTING_DOWN, "the model manager shut down before this request ran"))
        for thread in self._threads:
            if thread.ident is not None:  # started
                thread.join(timeout)

    @property
    def busy(self) -> int:
        """How many instances are running a batch right now."""
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
                self._busy += 1
            self._run_counted(batch)

    def run_next(self) -> bool:
        """Run the batch that is due now, if any, on the calling thread; False when none is.
        For driving a worker step by step with an explicit clock (tests, tools): call it on
        a worker whose threads were never started."""
        with self._cond:
            batch = self._due_batch_locked(self._clock())
            if batch is None:
                return False
            self._busy += 1
        self._run_counted(batch)
        return True

    def _run_counted(self, batch: Batch[Job]) -> None:
        try:
            self._run(batch)
        finally:
            with self._cond:
                self._busy -= 1
                if self._busy == 0:
                    self._idle_since = self._clock()
                self._refresh_choice_locked()

    def _drain_estimate_ms_locked(self) -> int:
        """About how long until the queue has room: its cost at the current batch size's
        measured throughput, or a second when nothing has been measured yet."""
        units = sum(j.cost for j in self.batcher.queued())
        rate = self._cost(self._last_bucket).throughput(self.choice.size)
        return int(1000 * units / rate) if rate else 1000

    def _refresh_choice_locked(self) -> None:
        """Pick the batch size for the next batch and give the batcher the matching policy.

        Dynamic: each bucket's cost model's best size, for the groups of that bucket. The
        configured min_batch_size still decides when an idle worker stops waiting, but never
        above the chosen size: when batching does not pay (size 1), nothing waits at all.
        """
        p = self.policy
        if self.dynamic_batching and p.enabled:
            self.choices = {b: self._cost(b).choose(1, p.max_batch_size) for b in self.costs}
            self.choice = self.choices[self._last_bucket]
            self.batcher.policy = p
            self.batcher.group_size = self._group_size_locked
        else:
            self.choices = {}
            self.choice = SizeChoice(p.max_batch_size, "dynamic_batching is off: configured sizes")
            size = self.choice.size
            self.batcher.policy = replace(p, max_batch_size=size, min_batch_size=min(p.min_batch_size, size))
            self.batcher.group_size = None

    def _group_size_locked(self, key: Hashable) -> int:
        """The batch size of `key`'s group: its bucket's chosen size; for a group that units
        of split requests join while short requests are about, a slice of it (`_slice_locked`)."""
        bucket = self._key_buckets.get(key)
        if bucket not in self.choices:  # first seen since the last refresh
            self.choices[bucket] = self._cost(bucket).choose(1, self.policy.max_batch_size)
        size = self.choices[bucket].size
        if size > 1 and self._clock() - self._whole_seen < SHORT_WORK_MEMORY_S \
                and any(parent.key == key for parent in self.splits.parents()):
            return self._slice_locked(bucket, size)
        return size

    def _slice_locked(self, bucket: Hashable, size: int) -> int:
        """The largest batch, up to `size`, measured to take at most UNIT_SLICE times one item
        alone: on a GPU, where batching is nearly free, the batch; on a CPU, where a batch of
        n takes n times as long, one. So a short request that arrives while units run is not
        held behind a long batch of them, and a long request alone (no short request within
        SHORT_WORK_MEMORY_S) still runs at the best measured throughput."""
        cost = self._cost(bucket)
        one = cost.predict(1, 1.0)
        if one is None:
            return 1
        return next((n for n in range(size, 1, -1)
                     if (took := cost.predict(n, float(n))) is not None and took <= UNIT_SLICE * one), 1)

    def _batch_limit_locked(self, now: float) -> int:
        limit = self.batcher.policy.max_batch_size
        if not self.dynamic_batching:
            return limit
        limit = self.memory.max_items(limit)
        queued = self.batcher.queued()
        # Keep the batch small enough to finish before the most urgent request's target (its
        # deadline when it has none): a live final must not wait for a batch of partials that
        # the engine runs slower than the final alone (a CPU does). A request that would miss
        # its target even alone no longer sizes batches: shrinking them could not save it,
        # and under overload, when every target is missed, batches of one would only cut
        # throughput when the queue is longest.
        savable = [j for j in queued if self._can_make_target(j, now)]
        if savable:
            urgent = min(savable, key=Job.due_by)
            units = sum(j.cost for j in queued) / len(queued)
            cost = self._cost(urgent.bucket)
            limit = min(limit, cost.largest_within(urgent.due_by() - now, units, limit))
        return limit

    def _can_make_target(self, job: Job, now: float) -> bool:
        alone = self._cost(job.bucket).predict(1, job.cost)
        return alone is None or job.due_by() - now >= alone

    def _next_batch_locked(self) -> Batch[Job] | None:
        while not self._stopping:
            now = self._clock()
            batch = self._due_batch_locked(now)
            if batch is not None:
                return batch
            idle_since = self._idle_since if self._busy == 0 else None
            wait = self.batcher.seconds_until_due(now, idle_since, self._incoming)
            deadlines = [j.deadline for j in self.batcher.queued()]
            if deadlines:
                soonest = max(0.0, min(deadlines) - now)
                wait = soonest if wait is None else min(wait, soonest)
            self._cond.wait(timeout=wait)
        return None

    def _due_batch_locked(self, now: float) -> Batch[Job] | None:
        """Answer what expired in the queue, then take the batch that is due, if one is."""
        for job in self.batcher.remove(lambda j, now=now: j.deadline <= now):
            expired = BusError(TIMEOUT, "request expired in the queue before it could run")
            if job.unit is None:
                self._finish(job, expired)
            elif (failed := self._fail_split_locked(job.unit, expired)) is not None:
                self._finish(failed.parent, failed.error)
        idle_since = self._idle_since if self._busy == 0 else None
        return self.batcher.next_batch(now, limit=self._batch_limit_locked(now), idle_since=idle_since,
                                       incoming=self._incoming)

    def _fail_split_locked(self, ref: UnitRef, error: BusError) -> Failed[Job] | None:
        """Close a split at its first failed unit and take its other units out of the queue."""
        failed = self.splits.failed(ref, error)
        if failed is not None:
            self.batcher.remove(lambda j: j.unit is not None and j.unit.split == ref.split)
        return failed

    def _run(self, batch: Batch[Job]) -> None:
        s = self.stats
        s.batch_started(len(batch.items), batch.reason, batch.waited_s)
        log.info(
            "batch start model=%s size=%d reason=%s oldest_wait_ms=%.1f",
            self.engine.name,
            len(batch.items),
            batch.reason,
            max(batch.waited_s, default=0.0) * 1000,
        )
        fallbacks_before = s.fallback_count()
        started = time.perf_counter()
        outcomes = self._run_resilient(batch.items)
        elapsed = time.perf_counter() - started
        if s.fallback_count() == fallbacks_before:  # a clean run measures the batch size
            with self._cond:
                self._last_bucket = batch.items[0].bucket
                cost = self._cost(self._last_bucket)
                cost.observe(len(batch.items), sum(j.cost for j in batch.items), elapsed)
        ok = sum(not isinstance(o, BusError) for o in outcomes)
        log.info(
            "batch completed model=%s ok=%d/%d elapsed_ms=%.1f",
            self.engine.name,
            ok,
            len(outcomes),
            elapsed * 1000,
        )
        run = BatchRun(next(self._batch_numbers), elapsed, len(outcomes))
        for job, waited_s, outcome in zip(batch.items, batch.waited_s, outcomes, strict=True):
            if job.unit is not None:
                self._unit_done(job.unit, waited_s, outcome, run)
                continue
            if not isinstance(outcome, BusError):
                outcome = Timed(outcome, Timing(prepare_ms=round(job.prepare_s * 1000, 3),
                                                queue_ms=round(waited_s * 1000, 3),
                                                compute_ms=round(elapsed * 1000, 3),
                                                batch_size=len(outcomes)))
            self._finish(job, outcome)

    def _unit_done(self, ref: UnitRef, waited_s: float, outcome: Outcome, run: BatchRun) -> None:
        """Record one unit's outcome; release the split's next units, or answer its request
        once: joined when this was its last unit, or failed with this unit's cause."""
        with self._cond:
            if isinstance(outcome, BusError):
                failed = self._fail_split_locked(ref, outcome)
                joined = None
            else:
                failed = None
                joined = self.splits.completed(ref, outcome, waited_s, run)
                if joined is None:
                    self._release_locked(ref.split, self._clock())
                    self._cond.notify()
        if failed is not None:
            self._finish(failed.parent, failed.error)
        if joined is None:
            return
        parent = joined.parent
        try:
            result = self.engine.join(parent.request, joined.results)
        except Exception as exc:  # a bug in join costs this request, answered with its cause
            log.exception("join failed model=%s job=%s", self.engine.name, parent.job_id)
            failure = BusError(INFERENCE_FAILED, f"joining its parts: {type(exc).__name__}: {exc}")
            self._finish(parent, failure)
            return
        timing = Timing(prepare_ms=round(parent.prepare_s * 1000, 3),
                        queue_ms=round(joined.queue_s * 1000, 3),
                        compute_ms=round(joined.compute_s * 1000, 3), batch_size=joined.batch_size)
        self._finish(parent, Timed(result, timing))

    def _run_resilient(self, jobs: list[Job]) -> list[Outcome]:
        try:
            return list(self._run_engine(jobs))
        except BusError as exc:
            if exc.code == OUT_OF_MEMORY and len(jobs) > 1:
                self._note_fallback("oom_split", len(jobs), "out_of_memory")
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
        self._note_fallback("one_by_one", len(jobs), repr(f"{type(failure).__name__}: {failure}"))
        return [self._run_resilient([job])[0] for job in jobs]

    def _note_fallback(self, reason: str, size: int, error: str) -> None:
        """Count, export and log one fallback, the same way for every reason."""
        self.stats.fallback(reason)
        log.warning(
            "batch fallback model=%s reason=%s size=%d error=%s", self.engine.name, reason, size, error
        )

    def _run_engine(self, jobs: list[Job]) -> list[Result]:
        started = time.perf_counter()
        self.memory.begin()
        measured = 0  # a failed call is no observation, but must still end the measurement
        try:
            results = self.engine.run_batch([j.request for j in jobs])
            measured = len(jobs)
        finally:
            self.memory.end(measured)
        elapsed = time.perf_counter() - started
        self.stats.engine_ran(elapsed)
        if len(results) != len(jobs):
            raise RuntimeError(f"engine returned {len(results)} results for {len(jobs)} requests")
        return results

    def _finish(self, job: Job, outcome: Outcome) -> None:
        code = outcome.code if isinstance(outcome, BusError) else None
        self.stats.request_finished(code)
        try:
            self._on_done(job, outcome)
        except Exception:  # a broken reply path must not kill the worker thread
            log.exception("on_done failed for job %s", job.job_id)

    def snapshot(self) -> dict[str, Any]:
        s = self.stats.copy()
        with self._cond:
            policy, dynamic, choice = self.policy, self.dynamic_batching, self.choice
            throughput = self._cost(self._last_bucket).snapshot()
            buckets = {str(b): {"chosen_batch_size": c.size, "throughput_by_size": self._cost(b).snapshot()}
                       for b, c in self.choices.items() if b is not None}
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
            "workers": {
                "total": len(self._threads),
                "ready": 0 if self._stopping else sum(t.is_alive() for t in self._threads),
                "busy": self._busy,
            },
            "busy": self._busy > 0,
            "policy": {
                "enabled": policy.enabled,
                "dynamic_batching": dynamic,
                "min_batch_size": policy.min_batch_size,
                "max_batch_size": policy.max_batch_size,
                "max_batch_wait_ms": round(policy.max_wait_s * 1000, 3),
                "unit_scheduling": policy.unit_scheduling,
            },
            "split_requests": s.split_requests,
            "chosen_batch_size": choice.size,
            "choice_reason": choice.reason,
            "throughput_by_size": throughput,
            "buckets": buckets,
            "queue_wait_ms": percentiles_ms(s.queue_wait_s),
            "compute_ms": percentiles_ms(s.compute_s),
        }
