"""Which model manager runs each job, and when: the agent's dispatch, pure and clocked.

A job is resolved to one model (`resolve_model`), then waits here until a live manager
holding that model has credit for it; the most urgent waiting job (lowest priority value,
then the oldest) goes first, to the manager with the most free credit
(`ManagerRegistry.pick`). Batching stays inside each manager: it only ever holds as many
jobs as its credit, so no manager's queue grows while another idles.

Contract:
- `enqueue` takes a job (or refuses it with `overloaded` when `max_waiting` of its model
  already wait); `assignments` hands out (job, manager) pairs within credit;
- a job no live manager can take waits until `give_up_at` (its deadline, or the model
  wait bound when no manager holds its model at all); `expired` returns those, to be
  answered with `model_unavailable`;
- `requeue` puts back a job its manager lost (died, hung, drained, turned it away for now),
  ahead of younger jobs of its priority; `cancel` forgets jobs wherever they are.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

from agents.managers import ManagerRecord, ManagerRegistry
from model_manager.errors import OVERLOADED, UNKNOWN_MODEL, BusError


@dataclass(order=True)
class _Waiting:
    priority: int
    seq: int
    job_id: str = field(compare=False)


@dataclass
class DispatchEntry:
    model: str
    priority: int
    seq: int
    deadline: float  # when its request times out (monotonic)
    #: When it started waiting with no live manager holding its model (None: one is live).
    orphaned_at: float | None = None


class Dispatcher:
    def __init__(self, registry: ManagerRegistry, max_waiting: int, model_wait_s: float) -> None:
        self.registry = registry
        self.max_waiting = max_waiting
        self.model_wait_s = model_wait_s
        self.entries: dict[str, DispatchEntry] = {}
        self._waiting: dict[str, list[_Waiting]] = {}
        self._seq = itertools.count()

    def enqueue(self, job_id: str, model: str, priority: int, deadline: float) -> None:
        if self.waiting(model) >= self.max_waiting:
            raise BusError(OVERLOADED, f"{model}: the queue is full ({self.max_waiting} jobs already wait "
                           "for a model manager); retry later", retry_after_ms=1000)
        entry = DispatchEntry(model, priority, next(self._seq), deadline)
        self.entries[job_id] = entry
        heapq.heappush(self._waiting.setdefault(model, []), _Waiting(priority, entry.seq, job_id))

    def requeue(self, job_ids: Iterable[str]) -> list[str]:
        """Put back jobs whose manager lost them; they keep their place in line. Returns
        those still known (a cancelled one is gone)."""
        back = []
        for job_id in job_ids:
            entry = self.entries.get(job_id)
            if entry is None:
                continue
            self.registry.settle(job_id)
            queue = self._waiting.setdefault(entry.model, [])
            heapq.heappush(queue, _Waiting(entry.priority, entry.seq, job_id))
            back.append(job_id)
        return back

    def assignments(self, now: float) -> list[tuple[str, ManagerRecord]]:
        """Every (job, manager) pair that can go now, most urgent job first, within credit."""
        sent: list[tuple[str, ManagerRecord]] = []
        for model, queue in self._waiting.items():
            while queue:
                head = queue[0]
                entry = self.entries.get(head.job_id)
                if entry is None or self.registry.holder(head.job_id) is not None:
                    heapq.heappop(queue)  # cancelled, or a stale copy of a requeued job
                    continue
                manager = self.registry.pick(model)
                if manager is None:
                    break
                heapq.heappop(queue)
                entry.orphaned_at = None
                self.registry.assign(manager, head.job_id, model)
                sent.append((head.job_id, manager))
        return sent

    def expired(self, now: float) -> list[str]:
        """Waiting jobs to answer with model_unavailable: no live manager has held their model
        for `model_wait_s`, or their deadline came while they waited."""
        live = self.registry.live_models()
        gone = []
        for model, queue in self._waiting.items():
            for item in queue:
                entry = self.entries.get(item.job_id)
                if entry is None or self.registry.holder(item.job_id) is not None:
                    continue
                if model in live:
                    entry.orphaned_at = None
                    continue
                if entry.orphaned_at is None:
                    entry.orphaned_at = now
                if now - entry.orphaned_at >= self.model_wait_s or entry.deadline <= now:
                    gone.append(item.job_id)
        for job_id in gone:
            self.forget(job_id)
        return gone

    def settle(self, job_id: str, identity: bytes) -> bool:
        """An answer came from `identity`: True when it held the job (the job is done)."""
        if not self.registry.settle(job_id, identity):
            return False
        self.entries.pop(job_id, None)
        return True

    def bounce(self, job_id: str, identity: bytes) -> bool:
        """`identity` turned the job away unrun: back in line, keeping its place. False when
        it did not hold the job."""
        if self.registry.holder(job_id) != identity or job_id not in self.entries:
            return False
        self.requeue([job_id])
        return True

    def forget(self, job_id: str) -> None:
        """Drop a job: answered some other way (timeout), or cancelled. The queues drop it lazily."""
        self.entries.pop(job_id, None)
        self.registry.settle(job_id)

    def cancel(self, job_ids: Iterable[str]) -> dict[bytes, list[str]]:
        """Forget `job_ids`; the ones a manager holds, by manager, to cancel there."""
        at: dict[bytes, list[str]] = {}
        for job_id in job_ids:
            holder = self.registry.holder(job_id)
            if holder is not None:
                at.setdefault(holder, []).append(job_id)
            self.forget(job_id)
        return at

    def waiting(self, model: str) -> int:
        return sum(1 for item in self._waiting.get(model, ())
                   if item.job_id in self.entries and self.registry.holder(item.job_id) is None)

    def demand(self, model: str) -> int:
        """Jobs for `model` waiting here plus those in flight at managers (KEDA scales on it)."""
        return self.waiting(model) + self.registry.in_flight(model)


def resolve_model(model_pref: object, task: str, configured: tuple[str, ...],
                  registry: ManagerRegistry) -> str:
    """The model a job runs on. `model_pref`: absent/"default" = the first configured model
    a live manager holds (else the first ever seen, else the first configured); "fast" and
    "quality" = the smallest and largest by parameters among those seen; or a name, which
    must be configured (it may wait for a manager that holds it)."""
    if not configured:
        raise BusError(UNKNOWN_MODEL, f"no {task} model is configured")
    live = registry.live_models()
    seen = registry.seen
    if model_pref in (None, "", "default"):
        for candidates in (live, seen):
            for name in configured:
                if name in candidates:
                    return name
        return configured[0]
    if model_pref in ("fast", "quality"):
        pool = [name for name in configured if name in live] or [name for name in configured if name in seen]
        if not pool:
            return configured[0]

        def size(name: str) -> int:
            return int(seen[name].details.get("num_parameters") or 0) if name in seen else 0

        return min(pool, key=size) if model_pref == "fast" else max(pool, key=size)
    if isinstance(model_pref, str) and model_pref in configured:
        return model_pref
    raise BusError(UNKNOWN_MODEL, f"model_pref {model_pref!r:.100} is not 'fast', 'quality' or one of: "
                                  f"{', '.join(configured)}")
