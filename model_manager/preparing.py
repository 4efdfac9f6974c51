"""Engines' `prepare` (checks, and for Whisper speech detection) off the model manager's socket thread.

Whisper's `prepare` trims silence with Silero VAD: milliseconds per clip, more under load. On
the socket thread it would serialise every agent's requests and delay pings and cancels.
`PreparePool` runs it on a few threads instead, and the job enters its model's queue only
once prepared: the batch key and bucket depend on the trimmed length.

Contract (`InOrder` is the pure part, tested without threads):
- Jobs of one lane (one model) leave in the order they arrived, whichever finishes preparing
  first: FIFO within a batch group, and a stream's chunks, hold as if prepared inline. Lanes
  do not wait for each other.
- `cancel` drops jobs still preparing or waiting for their turn; they are not handed off
  (like cancelled queued jobs, they are not answered), and they hold no later job back.
- Every other job is handed off exactly once, with its prepared request or the error its
  `prepare` raised; the caller answers errors and queues the rest.
- Every job's `Arrival.left` is called exactly once, when it leaves the pool (after its
  hand-off, or when cancelled), so the model's queue knows what is still on its way.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from model_manager.errors import BusError, internal_error

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

#: VAD runs in onnxruntime, which releases the GIL: one thread per core, a few at most.
PREPARE_THREADS = max(1, min(4, os.cpu_count() or 1))
_PENDING = object()


class InOrder(Generic[K, V]):
    """Values that complete in any order, released per lane in the order their keys were added."""

    def __init__(self) -> None:
        self._lanes: dict[Hashable, OrderedDict[K, Any]] = {}
        self._lane_of: dict[K, Hashable] = {}

    def __len__(self) -> int:
        return len(self._lane_of)

    def __contains__(self, key: object) -> bool:
        return key in self._lane_of

    def add(self, lane: Hashable, key: K) -> None:
        self._lanes.setdefault(lane, OrderedDict())[key] = _PENDING
        self._lane_of[key] = lane

    def complete(self, key: K, value: V) -> list[tuple[K, V]]:
        """Record `key`'s value; return what is now released. A key no longer held (cancelled)
        releases nothing of its own."""
        lane = self._lane_of.get(key)
        if lane is None:
            return []
        self._lanes[lane][key] = value
        return self._release(lane)

    def cancel(self, keys: set[K]) -> list[tuple[K, V]]:
        """Forget `keys`; return what their leaving releases."""
        lanes = {self._lane_of.pop(k) for k in keys if k in self._lane_of}
        released = []
        for lane in lanes:
            entries = self._lanes[lane]
            for key in [k for k in entries if k in keys]:
                del entries[key]
            released += self._release(lane)
        return released

    def _release(self, lane: Hashable) -> list[tuple[K, V]]:
        entries = self._lanes[lane]
        released = []
        while entries:
            key, value = next(iter(entries.items()))
            if value is _PENDING:
                break
            del entries[key]
            del self._lane_of[key]
            released.append((key, value))
        if not entries:
            del self._lanes[lane]
        return released


@dataclass
class Arrival:
    """An "infer" accepted by the socket thread, still to be prepared."""

    identity: bytes
    job_id: str
    lane: str  # the model's name
    prepare: Callable[[], Any]  # the engine's prepare, bound to the client's fields
    left: Callable[[], None] = lambda: None  # called once it has left the pool


class PreparePool:
    """Runs each `Arrival.prepare` on `threads` threads and calls `hand_off(arrival, prepared)`
    in each lane's arrival order (see the module docstring): `prepared` is what `prepare`
    returned or the BusError it raised (any other exception becomes internal_error).
    `hand_off` runs on a pool thread under the pool's lock, so a `cancel` comes either before
    it (the job is dropped) or after it (the job is queued, and the caller's cancel of its
    queue finds it): keep it short."""

    def __init__(self, hand_off: Callable[[Arrival, Any], None], threads: int = PREPARE_THREADS) -> None:
        self._hand_off = hand_off
        self._order: InOrder[tuple[bytes, str], tuple[Arrival, Any]] = InOrder()
        self._arrivals: dict[tuple[bytes, str], Arrival] = {}  # in the pool
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="prepare")

    @property
    def busy(self) -> int:
        """Jobs preparing or waiting for their turn."""
        with self._lock:
            return len(self._order)

    def submit(self, arrival: Arrival) -> None:
        with self._lock:
            self._order.add(arrival.lane, (arrival.identity, arrival.job_id))
            self._arrivals[(arrival.identity, arrival.job_id)] = arrival
        try:
            self._executor.submit(self._prepare, arrival)
        except RuntimeError:  # closed: the caller answers; the job never entered the pool
            with self._lock:
                self._arrivals.pop((arrival.identity, arrival.job_id), None)
                self._order.cancel({(arrival.identity, arrival.job_id)})
            self._left(arrival)
            raise

    def cancel(self, identity: bytes, job_ids: set[str]) -> int:
        """Drop these jobs of this agent if they are still here; how many were."""
        keys = {(identity, j) for j in job_ids}
        with self._lock:
            gone = [a for k in keys if (a := self._arrivals.pop(k, None)) is not None]
            self._release(self._order.cancel(keys))
            for arrival in gone:
                self._left(arrival)
            return len(gone)

    def close(self) -> None:
        """Wait for every job in preparation to be handed off."""
        self._executor.shutdown(wait=True)

    def _prepare(self, arrival: Arrival) -> None:
        try:
            prepared = arrival.prepare()
        except BusError as exc:
            prepared = exc
        except Exception as exc:  # a bug must cost this job, answered, not the pool thread
            log.exception("preparing job %s failed", arrival.job_id)
            prepared = internal_error(exc)
        with self._lock:
            self._release(self._order.complete((arrival.identity, arrival.job_id), (arrival, prepared)))

    def _release(self, released: list[tuple[tuple[bytes, str], tuple[Arrival, Any]]]) -> None:
        for key, (arrival, prepared) in released:
            self._arrivals.pop(key, None)
            try:
                self._hand_off(arrival, prepared)
            except Exception:  # the caller answers its own failures; never lose the lock's thread
                log.exception("handing off job %s failed", arrival.job_id)
            self._left(arrival)

    @staticmethod
    def _left(arrival: Arrival) -> None:
        try:
            arrival.left()
        except Exception:
            log.exception("left() of job %s failed", arrival.job_id)
