"""The dynamic batcher: a pure queue that decides which requests run together, and when.

No sockets, threads or clocks live here: the caller passes `now` (seconds, monotonic) to
every method, so the policy is tested with a simulated clock. `model_queue.py` drives it.

Contract
--------
- `add(item, key, now)` queues an item. Items with equal `key` are compatible: they may
  share one forward pass. Keys are computed from request content by the engine. Raises
  `QueueFull` at once when `max_queue_size` items are already waiting, unless the item is
  `admitted`: a later unit of a request the queue already took (see units.py), which must
  not fail half-way; such items can hold the queue above `max_queue_size`, by at most one
  batch per split request.
- `order` (default: the arrival time) ranks items of equal priority: the scheduler passes
  each item's expected finish when it orders by it (docs/protocol.md §7); a smaller `order`
  is more urgent.
- A group of compatible items becomes *due* when any of these holds:
  - `full`: it holds `max_batch_size` items;
  - `min_reached`: it holds `min_batch_size` items;
  - `timeout`: its oldest item has waited `max_wait_s` (counted from that item's arrival,
    so a lone request waits at most `max_wait_s` and then runs alone);
  - `fast_path`: it is the only item queued and nothing else has arrived for
    `lone_wait_s` (a few ms): a single user does not pay the batching wait; or it is the only
    item queued and it arrived at least `lone_wait_s` after the worker went idle
    (`idle_since`): nothing is running whose replies could bring company, so it runs at once
    (unless `lone_wait_s` >= `max_wait_s`, which turns every fast path off); or the worker
    is idle, every queued item is alone in its group (none can share a batch with another)
    and nothing has arrived for `lone_wait_s`: the most urgent runs rather than leave the
    worker idle (a live final and a partial of another window length, say). None of these
    holds while the caller says `incoming` jobs are on their way (being prepared): a burst
    must not leave its first item to run alone just before the rest arrive;
  - `unbatched`: batching is disabled, so every item is due at once, alone.
- `group_size(key)`, when set, caps the batch size of one group below `max_batch_size` (the
  caller learns a best size per kind of request); `full` and `min_reached` use the cap.
- `next_batch(now)` pops the most urgent due group (best priority, then smallest `order`)
  and returns at most its batch size of its items (or fewer, if `limit` says so), most
  urgent first (by priority, then `order`; ties in arrival order); None when nothing is
  due. Items that do not fit stay queued with their arrival times unchanged, so they are
  due again immediately.
- `seconds_until_due(now)` says how long the caller may sleep before something can be
  due without a new `add`: 0 when something is due now, None when the queue is empty.
- `drain()` empties the queue and returns every item (for shutdown replies).

Nothing is ever dropped silently: an item leaves only through `next_batch` or `drain`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

INTERACTIVE = 0
BULK = 1


class QueueFull(Exception):
    """The batcher already holds max_queue_size items."""


@dataclass(frozen=True)
class BatchPolicy:
    """The batching settings: `batch_processing_config` in config/llm_config.yaml, and what
    `configure` changes at run time. Times are in ms, as configured and as on the wire; the
    batcher reads them in seconds (`max_wait_s`, `lone_wait_s`). `dynamic_batching`,
    `unit_scheduling` and `warmup` are read by the scheduler and the model manager, not here."""

    enabled: bool = True
    max_batch_size: int = 8
    min_batch_size: int = 2
    max_batch_wait_ms: float = 100.0
    dynamic_batching: bool = True
    max_queue_size: int = 256
    lone_request_wait_ms: float = 2.0
    #: Measure each candidate batch size on synthetic input at start-up (dynamic batching only).
    warmup: bool = True
    #: Run long requests as units (Whisper windows, Kokoro pieces) that queue and batch with
    #: other requests, ordered by expected finish (see units.py); false: each request whole.
    unit_scheduling: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch_size <= self.max_batch_size:
            raise ValueError("need 1 <= min_batch_size <= max_batch_size")
        if self.max_batch_wait_ms < 0 or self.lone_request_wait_ms < 0 or self.max_queue_size < 1:
            raise ValueError("need max_batch_wait_ms >= 0, lone_request_wait_ms >= 0 and max_queue_size >= 1")

    @property
    def max_wait_s(self) -> float:
        return self.max_batch_wait_ms / 1000.0

    @property
    def lone_wait_s(self) -> float:
        return self.lone_request_wait_ms / 1000.0


@dataclass
class _Queued(Generic[T]):
    item: T
    arrival: float
    priority: int
    order: float


@dataclass
class _Group(Generic[T]):
    entries: list[_Queued[T]] = field(default_factory=list)

    def urgency(self) -> tuple[int, float]:
        return min((e.priority, e.order) for e in self.entries)

    def oldest_arrival(self) -> float:
        return min(e.arrival for e in self.entries)


@dataclass(frozen=True)
class Batch(Generic[T]):
    key: Hashable
    items: list[T]
    reason: str  # full | min_reached | timeout | unbatched
    waited_s: list[float]  # queue wait of each item, in the same order


class DynamicBatcher(Generic[T]):
    def __init__(self, policy: BatchPolicy) -> None:
        self.policy = policy
        self._groups: dict[Hashable, _Group[T]] = {}
        self._size = 0
        self._last_arrival = float("-inf")
        self.group_size: Callable[[Hashable], int] | None = None

    def __len__(self) -> int:
        return self._size

    def add(self, item: T, key: Hashable, now: float, priority: int = INTERACTIVE, order: float | None = None,
            admitted: bool = False) -> None:
        if self._size >= self.policy.max_queue_size and not admitted:
            raise QueueFull(f"{self._size} requests already queued")
        entry = _Queued(item, now, priority, now if order is None else order)
        self._groups.setdefault(key, _Group()).entries.append(entry)
        self._size += 1
        self._last_arrival = now

    def batch_size(self, key: Hashable) -> int:
        """The most items one batch of `key`'s group takes (before a caller's `limit`)."""
        size = self.policy.max_batch_size
        return size if self.group_size is None else max(1, min(size, self.group_size(key)))

    def _due_reason(
        self, key: Hashable, group: _Group[T], now: float, idle_since: float | None, incoming: int = 0
    ) -> str | None:
        p = self.policy
        n = len(group.entries)
        size = self.batch_size(key)
        if not p.enabled:
            return "unbatched"
        if n >= size:
            return "full"
        if n >= min(p.min_batch_size, size):
            return "min_reached"
        if now - group.oldest_arrival() >= p.max_wait_s:
            return "timeout"
        if incoming:
            return None
        quiet = now - self._last_arrival >= p.lone_wait_s
        if self._size == 1 and quiet:
            return "fast_path"
        # A lone wait as long as the batching wait turns every fast path off (a pinned policy).
        if idle_since is None or p.lone_wait_s >= p.max_wait_s:
            return None
        if self._size == 1 and self._last_arrival - idle_since >= p.lone_wait_s:
            return "fast_path"
        if self._only_singles() and quiet:
            return "fast_path"
        return None

    def _only_singles(self) -> bool:
        """Every queued item is alone in its group."""
        return len(self._groups) == self._size

    def next_batch(
        self, now: float, limit: int | None = None, idle_since: float | None = None, incoming: int = 0
    ) -> Batch[T] | None:
        """`idle_since`: when the caller's worker last finished a batch; None while it runs one.
        `incoming`: jobs on their way to this queue (they hold the fast path)."""
        due = [
            (g.urgency(), key, reason)
            for key, g in self._groups.items()
            if (reason := self._due_reason(key, g, now, idle_since, incoming)) is not None
        ]
        if not due:
            return None
        _, key, reason = min(due, key=lambda d: d[0])
        group = self._groups[key]
        size = 1 if not self.policy.enabled else self.batch_size(key)
        if limit is not None:
            size = max(1, min(size, limit))
        # Within a group, urgent items go first; the sort is stable, so arrival order holds on ties.
        group.entries.sort(key=lambda e: (e.priority, e.order))
        taken, group.entries = group.entries[:size], group.entries[size:]
        if not group.entries:
            del self._groups[key]
        self._size -= len(taken)
        return Batch(key, [e.item for e in taken], reason, [now - e.arrival for e in taken])

    def seconds_until_due(
        self, now: float, idle_since: float | None = None, incoming: int = 0
    ) -> float | None:
        if not self._groups:
            return None
        waits = []
        for key, group in self._groups.items():
            if self._due_reason(key, group, now, idle_since, incoming) is not None:
                return 0.0
            waits.append(group.oldest_arrival() + self.policy.max_wait_s - now)
        if not incoming and (self._size == 1 or (idle_since is not None and self._only_singles())):
            waits.append(self._last_arrival + self.policy.lone_wait_s - now)
        return max(0.0, min(waits))

    def remove(self, predicate: Callable[[T], bool]) -> list[T]:
        """Take out every queued item for which predicate is true (expired or cancelled)."""
        removed: list[_Queued[T]] = []
        for key in list(self._groups):
            group = self._groups[key]
            keep = []
            for entry in group.entries:
                (removed if predicate(entry.item) else keep).append(entry)
            if keep:
                group.entries = keep
            else:
                del self._groups[key]
        self._size -= len(removed)
        return [e.item for e in removed]

    def drain(self) -> list[T]:
        return self.remove(lambda _item: True)

    def queued(self) -> list[T]:
        return [e.item for g in self._groups.values() for e in g.entries]
