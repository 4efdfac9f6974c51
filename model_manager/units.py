"""Long requests run as units: the bookkeeping of split requests, pure.

A 5-minute recording or a long article would hold a model's worker for all of its windows or
pieces if it ran as one job, and every short request would wait behind it. So the worker
(scheduler.py) asks the engine to `split` a prepared request; when it gives more than one
unit, the request becomes a *split*: its units enter the model's queue a few at a time,
batch with other requests' units and whole requests of the same kind, and short requests
that arrive meanwhile run between them. This module is the record of each split; it holds
no clock, lock, thread or engine.

Contract
--------
- `open(parent, units)` records a request and its units (in order); `release(split, room)`
  hands out its next units, in order, as many as keep `room` of them queued or running at
  once (the worker passes the batch size of their kind, so a lone long request still fills
  its batches; while short requests are about, that size is a short slice).
- `completed(ref, result, waited_s, batch)` records one unit's result. When it was the
  last, the split closes and a `Joined` comes back: the results in unit order (whatever
  order they finished in) and the request's timing: the sum of its units' waits in the
  queue, the sum of the engine time of the batches its units ran in (each batch once), and
  the largest of those batches. The caller joins the results and answers once.
- `failed(ref, error)` closes the split at its first failed unit and returns a `Failed`
  with the cause, naming the unit ("part 3 of 12"); the caller answers the request with it
  and takes the split's other queued units out of the queue. A request is never answered
  with the results of some of its units.
- `cancel(predicate)` and `drain()` close splits without an answer (`cancel`: its client
  has gone) or for the caller to answer (`drain`: shutdown), and return their requests.
- Anything reported for a closed split (a unit that was running when its request failed,
  was cancelled or expired) returns None and changes nothing: every request is answered
  at most once.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from model_manager.errors import BusError

P = TypeVar("P")


@dataclass(frozen=True)
class UnitRef:
    """Which unit a queued job is: its split's number and its place (from 0) of `count`."""

    split: int
    index: int
    count: int

    def describe(self) -> str:
        return f"part {self.index + 1} of {self.count}"


@dataclass(frozen=True)
class BatchRun:
    """The batch a unit ran in: its number (unique per worker), engine seconds and size."""

    number: int
    compute_s: float
    size: int


@dataclass(frozen=True)
class Joined(Generic[P]):
    """A split whose every unit succeeded: its request, the results in unit order, and timing."""

    parent: P
    results: list[Any]
    queue_s: float
    compute_s: float
    batch_size: int


@dataclass(frozen=True)
class Failed(Generic[P]):
    """A split that failed at one of its units: its request and the error to answer it with."""

    parent: P
    error: BusError


@dataclass
class _Split(Generic[P]):
    parent: P
    units: list[Any]
    released: int = 0
    done: int = 0
    results: list[Any] = field(default_factory=list)
    queue_s: float = 0.0
    batches: dict[int, BatchRun] = field(default_factory=dict)

    @property
    def in_flight(self) -> int:
        """Released units not yet done: queued or running."""
        return self.released - self.done


class SplitBook(Generic[P]):
    """The open splits of one model's worker, by number (see the module docstring)."""

    def __init__(self) -> None:
        self._splits: dict[int, _Split[P]] = {}
        self._numbers = itertools.count()

    def __len__(self) -> int:
        return len(self._splits)

    def __contains__(self, split: object) -> bool:
        return split in self._splits

    def open(self, parent: P, units: Sequence[Any]) -> int:
        if len(units) < 2:
            raise ValueError(f"a split needs at least two units, got {len(units)}")
        number = next(self._numbers)
        self._splits[number] = _Split(parent, list(units), results=[None] * len(units))
        return number

    def release(self, split: int, room: int) -> list[tuple[UnitRef, Any]]:
        """The next units to queue, so that at most `room` (at least 1) are queued or running."""
        record = self._splits.get(split)
        if record is None:
            return []
        count = len(record.units)
        take = min(count - record.released, max(1, room) - record.in_flight)
        first = record.released
        record.released += max(0, take)
        return [(UnitRef(split, i, count), record.units[i]) for i in range(first, record.released)]

    def completed(self, ref: UnitRef, result: Any, waited_s: float, batch: BatchRun) -> Joined[P] | None:
        record = self._splits.get(ref.split)
        if record is None or record.results[ref.index] is not None:
            return None
        record.results[ref.index] = result
        record.done += 1
        record.queue_s += waited_s
        record.batches[batch.number] = batch
        if record.done < len(record.units):
            return None
        del self._splits[ref.split]
        runs = record.batches.values()
        return Joined(record.parent, record.results, record.queue_s, sum(b.compute_s for b in runs),
                      max(b.size for b in runs))

    def failed(self, ref: UnitRef, error: BusError) -> Failed[P] | None:
        record = self._splits.pop(ref.split, None)
        if record is None:
            return None
        cause = BusError(error.code, f"{ref.describe()} failed: {error.message}", error.retry_after_ms)
        return Failed(record.parent, cause)

    def parents(self) -> list[P]:
        """The requests of the open splits."""
        return [record.parent for record in self._splits.values()]

    def parent(self, split: int) -> P | None:
        record = self._splits.get(split)
        return None if record is None else record.parent

    def cancel(self, predicate: Callable[[P], bool]) -> list[P]:
        """Close the splits whose request matches; they are not to be answered."""
        gone = [n for n, record in self._splits.items() if predicate(record.parent)]
        return [self._splits.pop(n).parent for n in gone]

    def drain(self) -> list[P]:
        """Close every split (shutdown); the caller answers each request."""
        return self.cancel(lambda _parent: True)
