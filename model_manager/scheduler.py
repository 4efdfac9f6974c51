"""Worker threads per loaded model: they take due batches from the model's queue and run them.

This is where the pure scheduling policy meets time, threads and failure. The parts, each
in a module of its own:
- The queue (model_queue.py): whole requests and the units of split ones (units.py), which
  batch is due, and the answers for what expired. Queued work is ordered by expected
  finish, so a short request that arrives while a long one runs goes before that one's next
  units, and a long request is never starved.
- Batch sizes (batch_sizes.py, pure): with dynamic batching, each batch's size comes from a
  `CostModel` that measures every batch (and a short warm-up), capped by free memory and by
  the earliest queued target. Without it, the configured sizes apply as they are. Requests
  of one engine can differ in cost per item (Whisper's window lengths): the engine's
  `bucket` says which kind a request is, and each bucket has its own cost model and size.
- Running a batch (resilient_run.py): a batch that fails with out-of-memory is split in
  halves and retried, down to single items; one that fails any other way is retried one
  item at a time, so one bad item fails alone and the rest succeed.
- The figures (worker_stats.py): the one record of every batch, read by `stats` and the
  Prometheus exporter.
The worker itself keeps the threads and the answers:
- Lanes (lanes.py): with a long lane, a second copy of the engine runs the units of split
  requests on a thread of its own at the lowest OS priority, beside the threads that run
  every request whole, so a short request never waits for a long one's window or piece. A
  long batch the OS has starved past its patience (`lanes.LONG_LANE_PATIENCE` times what it
  takes alone) makes the short lane start nothing new until it ends: a long request always
  advances.
- A lone request reaching an idle worker runs at once (see batcher: fast_path), unless more
  jobs for this model are still being prepared (`expect` / `expected_left`): they would
  have run alone one after another.
- With `unit_scheduling` (the default), a request the engine splits (`Engine.split`: a long
  recording's 30 s windows, a long text's pieces) runs as units, and is joined and answered
  once, when its last unit is done or at its first failure.
- Expired requests (past their deadline) are answered with a timeout and never run.
- Every job ends in exactly one `on_done(job, result_or_error)` call; a result is `Timed`:
  the engine's, with where the request's time went. Nothing is dropped and no placeholder
  output is ever made up for a failed item.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from model_manager.batcher import Batch, BatchPolicy
from model_manager.cost_model import CostModel
from model_manager.engines.base import Engine
from model_manager.errors import INFERENCE_FAILED, SHUTTING_DOWN, BusError
from model_manager.jobs import Clock, Job, Outcome, Timed, Timing
from model_manager.lanes import LONG, SHORT, Lane, LaneBook, lower_priority
from model_manager.memory import MemoryBudget
from model_manager.model_queue import ModelQueue
from model_manager.percentiles import percentiles_ms
from model_manager.resilient_run import ResilientRun
from model_manager.units import BatchRun, Joined, UnitRef
from model_manager.worker_stats import WorkerStats

log = logging.getLogger(__name__)


class ModelWorker:
    """Runs one engine's batches on `instances` threads that share one queue, and the units
    of split requests on `long_lane` (a second copy of the engine) when given.

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
        long_lane: Engine | None = None,
    ) -> None:
        self.engine = engine
        self.long_lane = long_lane
        self.queue = ModelQueue(engine, policy, dynamic_batching, clock, cost_model,
                                long_lane=long_lane is not None)
        self.memory = MemoryBudget(engine.device)
        self.stats = WorkerStats()
        self._runners = {SHORT: ResilientRun(engine, self.memory, self.stats)}
        if long_lane is not None:
            self._runners[LONG] = ResilientRun(long_lane, self.memory, self.stats)
        self._batch_numbers = itertools.count()
        self._lanes = LaneBook(tuple(self._runners))
        self._incoming = 0  # jobs on their way (being prepared): see expect()
        self._on_done = on_done
        self._clock = clock
        self._cond = threading.Condition()  # guards the queue and the counts here
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._loop, args=(SHORT,), name=f"worker-{engine.name}-{i}", daemon=True)
            for i in range(max(1, instances))
        ]
        if long_lane is not None:
            self._threads.append(threading.Thread(target=self._loop, args=(LONG,),
                                                  name=f"worker-{engine.name}-long", daemon=True))

    @property
    def policy(self) -> BatchPolicy:
        """The batching settings as configured; the batcher's own policy is the effective one."""
        return self.queue.sizes.policy

    @property
    def dynamic_batching(self) -> bool:
        return self.queue.sizes.dynamic_batching

    def start(self) -> None:
        with self._cond:
            self.queue.refresh()
        for thread in self._threads:
            thread.start()

    def reconfigure(self, policy: BatchPolicy, dynamic_batching: bool) -> None:
        """Apply new batching settings at once, without a restart; queued requests stay queued."""
        with self._cond:
            self.queue.sizes.set_policy(policy, dynamic_batching)
            self.queue.refresh()
            self._cond.notify_all()

    def warm_up(self, max_items: int | None = None) -> None:
        """Measure each candidate batch size on synthetic input before serving, as often as
        the cost model needs to choose (CostModel.warm_up_sizes), so the first live batches
        exploit this device's numbers instead of exploring while requests queue. Buckets the
        warm-up did not reach start from its numbers (CostModel.for_bucket)."""
        with self._cond:
            sizes = self.queue.sizes.warm_up_sizes(max_items)
        requests = self.engine.warmup_requests(max(sizes))
        if not requests:
            return
        self.engine.run_batch(requests[:1])  # first-call allocations are not batching cost
        if self.long_lane is not None:
            self.long_lane.run_batch(requests[:1])
        bucket = self.engine.bucket(requests[0])
        with self._cond:
            cost = self.queue.sizes.cost(bucket)
        for size in sizes:
            batch = requests[:size]
            started = self._clock()
            self.engine.run_batch(batch)
            elapsed = self._clock() - started
            with self._cond:
                cost.observe(size, sum(self.engine.cost(r) for r in batch), elapsed)
        with self._cond:
            self.queue.sizes.warmed_up(bucket)
        log.info("warm-up model=%s throughput_by_size=%s", self.engine.name, cost.snapshot())

    # --- taking work -----------------------------------------------------------------------

    def expect(self) -> None:
        """A job for this model is being prepared: hold the idle fast path until it arrives."""
        with self._cond:
            self._incoming += 1

    def expected_left(self) -> None:
        """An expected job was queued (submit first), answered or dropped."""
        with self._cond:
            self._incoming = max(0, self._incoming - 1)
            self._cond.notify_all()

    def submit(self, job: Job) -> None:
        """Queue a prepared job; raises BusError shutting_down or overloaded (queue full)."""
        units = self._units_of(job)  # before the lock: the engine may plan for a few ms
        with self._cond:
            if self._stopping:
                raise BusError(SHUTTING_DOWN, "the model manager is shutting down")
            try:
                self.queue.add(job, units)
            except BusError as error:
                self.count_refused(error)
                raise
            if len(units) > 1:
                self.stats.split_opened()
            self._cond.notify_all()  # the threads wait for different lanes

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

    def count_refused(self, error: BusError) -> None:
        """Count a request refused before it was queued (invalid for this model, queue full)
        with the errors of the ones that ran, so `stats` and the metrics see every failure."""
        self.stats.request_finished(error.code, refused=True)

    def cancel(self, job_ids: set[str]) -> int:
        """Drop queued jobs whose client has gone, and the rest of split ones (a unit that is
        running finishes for nobody); they are not answered. How many requests were dropped."""
        with self._cond:
            return self.queue.cancel(job_ids)

    @property
    def alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def stop(self, timeout: float | None = None) -> None:
        """Stop taking work: queued jobs get a shutting_down error, the running batch finishes."""
        with self._cond:
            self._stopping = True
            left = self.queue.drain()
            self._cond.notify_all()
        for job in left:
            self._finish(job, BusError(SHUTTING_DOWN, "the model manager shut down before this request ran"))
        for thread in self._threads:
            if thread.ident is not None:  # started
                thread.join(timeout)

    @property
    def busy(self) -> int:
        """How many threads (instances and the long lane) are running a batch right now."""
        return sum(self._lanes.busy.values())

    def queue_depth(self) -> int:
        return len(self.queue)

    # --- the worker thread -------------------------------------------------------------

    def _loop(self, lane: Lane) -> None:
        if lane == LONG:
            lower_priority()
        while True:
            with self._cond:
                batch = self._next_batch_locked(lane)
                if batch is None:
                    return
                self._started_locked(lane, batch)
            self._run_counted(batch, lane)

    def run_next(self) -> bool:
        """Run the batch that is due now, if any, on the calling thread (the short lane's
        first, then the long lane's); False when none is. For driving a worker step by step
        with an explicit clock (tests, tools): call it on a worker whose threads were never
        started."""
        for lane in self._runners:
            with self._cond:
                batch = self._due_batch_locked(lane)
                if batch is None:
                    continue
                self._started_locked(lane, batch)
            self._run_counted(batch, lane)
            return True
        return False

    def _started_locked(self, lane: Lane, batch: Batch[Job]) -> None:
        alone = sum(self.queue.sizes.solo_seconds(job) for job in batch.items) if lane == LONG else 0.0
        self._lanes.started(lane, self._clock(), alone)

    def _run_counted(self, batch: Batch[Job], lane: Lane) -> None:
        try:
            self._run(batch, lane)
        finally:
            with self._cond:
                self._lanes.finished(lane, self._clock())
                self.queue.refresh()
                self._cond.notify_all()  # the other lane may wait on a size this batch measured

    def _next_batch_locked(self, lane: Lane) -> Batch[Job] | None:
        while not self._stopping:
            if lane == SHORT and self._lanes.short_lane_waits(self._clock()):
                self._lanes.yields += 1
                log.info("short lane waits for an overdue long-lane batch model=%s", self.engine.name)
                while not self._stopping and self._lanes.short_lane_waits(self._clock()):
                    self._cond.wait(timeout=1.0)  # woken when the long batch ends
                continue
            batch = self._due_batch_locked(lane)
            if batch is not None:
                return batch
            self._cond.wait(timeout=self.queue.seconds_until_due(lane, self._idle_since_locked(lane),
                                                                 self._incoming))
        return None

    def _due_batch_locked(self, lane: Lane) -> Batch[Job] | None:
        """Answer what expired in the queue, then take the lane's batch that is due, if one is."""
        for job, expired in self.queue.expire():
            self._finish(job, expired)
        return self.queue.next_batch(lane, self._idle_since_locked(lane), self._incoming,
                                     cap=self.memory.max_items)

    def _idle_since_locked(self, lane: Lane) -> float | None:
        """When the lane's last batch ended, while none runs; None while one does."""
        return self._lanes.idle_since(lane)

    # --- running a batch and answering -------------------------------------------------

    def _run(self, batch: Batch[Job], lane: Lane) -> None:
        self.stats.batch_started(len(batch.items), batch.reason, batch.waited_s)
        log.info(
            "batch start model=%s lane=%s size=%d reason=%s oldest_wait_ms=%.1f",
            self.engine.name,
            lane,
            len(batch.items),
            batch.reason,
            max(batch.waited_s, default=0.0) * 1000,
        )
        with self._cond:  # the long lane yields the cores: see LaneBook.measure_long
            measures = self._lanes.measure_long() if lane == LONG else lambda: True
        started = time.perf_counter()
        ran = self._runners[lane].run([j.request for j in batch.items])
        elapsed = time.perf_counter() - started
        with self._cond:
            if ran.clean and measures():  # a batch that needed no fallback measures its size
                self.queue.sizes.observe(batch.items, elapsed)
        outcomes = ran.outcomes
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
                outcome = Timed(outcome, Timing.of(job.prepare_s, waited_s, elapsed, len(outcomes)))
            self._finish(job, outcome)

    def _unit_done(self, ref: UnitRef, waited_s: float, outcome: Outcome, run: BatchRun) -> None:
        """Record one unit's outcome; answer its request once it is joined or has failed."""
        with self._cond:
            closed = self.queue.unit_done(ref, outcome, waited_s, run)
            if closed is None:  # its next units may have been queued
                self._cond.notify_all()
        if closed is None:
            return
        if not isinstance(closed, Joined):
            self._finish(closed.parent, closed.error)
            return
        parent = closed.parent
        try:
            result = self.engine.join(parent.request, closed.results)
        except Exception as exc:  # a bug in join costs this request, answered with its cause
            log.exception("join failed model=%s job=%s", self.engine.name, parent.job_id)
            failure = BusError(INFERENCE_FAILED, f"joining its parts: {type(exc).__name__}: {exc}")
            self._finish(parent, failure)
            return
        timing = Timing.of(parent.prepare_s, closed.queue_s, closed.compute_s, closed.batch_size)
        self._finish(parent, Timed(result, timing))

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
            policy, dynamic, sizes = self.policy, self.dynamic_batching, self.queue.sizes.snapshot()
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
                "busy": self.busy,
            },
            "busy": self.busy > 0,
            "long_lane": self.long_lane is not None,
            "short_lane_yields": self._lanes.yields,
            "policy": {
                "enabled": policy.enabled,
                "dynamic_batching": dynamic,
                "min_batch_size": policy.min_batch_size,
                "max_batch_size": policy.max_batch_size,
                "max_batch_wait_ms": round(policy.max_wait_s * 1000, 3),
                "unit_scheduling": policy.unit_scheduling,
            },
            "split_requests": s.split_requests,
            **sizes,
            "queue_wait_ms": percentiles_ms(s.queue_wait_s),
            "compute_ms": percentiles_ms(s.compute_s),
        }
