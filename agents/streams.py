"""Open streams: a pure state machine, with no sockets, threads or clocks of its own.

A stream is one request whose outputs (TTS chunks; next, live STT events) go to its client
one at a time, in order, each as soon as it is ready, over several calls. The agent drives
it: it adds the jobs a stream needs, sends the ones `release` hands out to the model
manager, puts each answer in with `fulfil` (or an output with no job behind it with `push`),
and answers its client's read calls with `take`. Every method that depends on time takes
`now` (monotonic seconds), so the whole contract is tested without sockets.

Contract
--------
- Outputs are slots in a fixed order. `add_job(job_id, payload)` reserves the next slot for
  the job's answer; `push(output)` reserves one and fills it at once. `end_input()` says no
  more slots will come; the stream is `finished` once every slot has been taken.
- Bounded: at most `max_buffered` outputs are in progress or ready-but-unread at once.
  `release()` hands out the next jobs to run (`ReleasedJob`s) only while that holds,
  so a stream nobody reads makes no more than `max_buffered` outputs. While no output has
  come yet, only one job runs (`first_alone`): the first output is not held up by a batch
  with its siblings. `push` raises `StreamFull` when the bound is reached.
- `fulfil(job_id, output)` fills that job's slot; False for a job the stream does not hold
  (cancelled, or answered already).
- `take(now)` returns the next output in order (`NextOutput`: with its index and whether it
  is the last one), or None when that output is not ready; reading renews the idle deadline.
- A stream that has not been read for `idle_s` (and has no read call waiting) `expired`;
  `cancel()` empties it and returns the job_ids still at the model manager, so the agent
  cancels them: nothing runs for a stream nobody reads.
- `reader` is the read call waiting for the next output (opaque here): at most one.

`StreamRegistry` holds the open streams by id, at most `max_open` of them: opening one more
raises `BusError(OVERLOADED)`, a second stream under an open id `BusError(DUPLICATE_REQUEST_ID)`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from model_manager.errors import DUPLICATE_REQUEST_ID, OVERLOADED, BusError

P = TypeVar("P")
Output = dict[str, Any]


class StreamFull(Exception):
    """`push` on a stream that already holds `max_buffered` unread outputs."""


@dataclass(frozen=True)
class ReleasedJob(Generic[P]):
    """A job `release` hands out: to send to the model manager now; its answer fills `slot`."""

    job_id: str
    slot: int
    payload: P


@dataclass(frozen=True)
class NextOutput:
    """What `take` returns: the next output, its place in the stream's order, and whether it
    is the stream's last."""

    index: int
    output: Output
    final: bool


@dataclass
class Stream(Generic[P]):
    stream_id: str
    idle_s: float
    idle_deadline: float
    max_buffered: int = 4
    first_alone: bool = True
    reader: Any = None
    #: Outputs by slot; a slot is absent until its output is ready.
    _ready: dict[int, Output] = field(default_factory=dict)
    _slots: int = 0  # slots reserved so far
    _next: int = 0  # the next slot to take
    _input_ended: bool = False
    _unsent: deque[ReleasedJob[P]] = field(default_factory=deque)
    _pending: dict[str, int] = field(default_factory=dict)  # job_id -> slot, at the model manager
    _produced: int = 0  # outputs filled so far

    @classmethod
    def open(cls, stream_id: str, now: float, idle_s: float, max_buffered: int = 4,
             first_alone: bool = True) -> Stream[P]:
        return cls(stream_id, idle_s, now + idle_s, max(1, max_buffered), first_alone)

    # --- input ------------------------------------------------------------------------

    def add_job(self, job_id: str, payload: P) -> int:
        """Reserve the next slot for `job_id`'s answer; the job waits for `release`."""
        slot = self._reserve()
        self._unsent.append(ReleasedJob(job_id, slot, payload))
        return slot

    def push(self, output: Output) -> int:
        """Reserve the next slot and fill it with `output` at once."""
        if not self.has_room():
            raise StreamFull(f"stream {self.stream_id!r} holds {self.max_buffered} unread outputs")
        slot = self._reserve()
        self._fill(slot, output)
        return slot

    def end_input(self) -> None:
        self._input_ended = True

    def _reserve(self) -> int:
        if self._input_ended:
            raise ValueError(f"stream {self.stream_id!r} takes no more outputs")
        self._slots += 1
        return self._slots - 1

    def _fill(self, slot: int, output: Output) -> None:
        self._ready[slot] = output
        self._produced += 1

    # --- jobs -------------------------------------------------------------------------

    def in_progress(self) -> int:
        """Outputs being made or made but unread: what `max_buffered` bounds."""
        return len(self._pending) + len(self._ready)

    def has_room(self) -> bool:
        return self.in_progress() < self.max_buffered

    def release(self) -> list[ReleasedJob[P]]:
        """The jobs to send to the model manager now, in slot order."""
        out = []
        while self._unsent and self.has_room():
            if self.first_alone and self._produced == 0 and self._pending:
                break
            job = self._unsent.popleft()
            self._pending[job.job_id] = job.slot
            out.append(job)
        return out

    def fulfil(self, job_id: str, output: Output) -> bool:
        slot = self._pending.pop(job_id, None)
        if slot is None:
            return False
        self._fill(slot, output)
        return True

    # --- output -----------------------------------------------------------------------

    def take(self, now: float) -> NextOutput | None:
        """The next output, or None when it is not ready yet."""
        self.idle_deadline = now + self.idle_s
        output = self._ready.pop(self._next, None)
        if output is None:
            return None
        index = self._next
        self._next += 1
        return NextOutput(index, output, self.finished)

    @property
    def num_outputs(self) -> int:
        return self._slots

    @property
    def finished(self) -> bool:
        return self._input_ended and self._next == self._slots

    def expired(self, now: float) -> bool:
        return self.reader is None and now >= self.idle_deadline

    def cancel(self) -> list[str]:
        """Empty the stream; the job_ids still at the model manager, to cancel there."""
        jobs = list(self._pending)
        self._pending.clear()
        self._unsent.clear()
        self._ready.clear()
        self._input_ended = True
        return jobs


class StreamRegistry(Generic[P]):
    """The open streams by id, bounded by `max_open` (see the module docstring)."""

    def __init__(self, max_open: int) -> None:
        self.max_open = max_open
        self._streams: dict[str, Stream[P]] = {}

    def __len__(self) -> int:
        return len(self._streams)

    def __iter__(self) -> Iterator[Stream[P]]:
        return iter(list(self._streams.values()))

    def add(self, stream: Stream[P]) -> None:
        if stream.stream_id in self._streams:
            raise BusError(DUPLICATE_REQUEST_ID, f"stream {stream.stream_id!r} is still open")
        if len(self._streams) >= self.max_open:
            raise BusError(OVERLOADED, f"{self.max_open} streams are open (limits.max_open_streams); "
                                       "read or cancel one, or retry later", retry_after_ms=1000)
        self._streams[stream.stream_id] = stream

    def get(self, stream_id: str) -> Stream[P] | None:
        return self._streams.get(stream_id)

    def close(self, stream_id: str) -> Stream[P] | None:
        return self._streams.pop(stream_id, None)

    def expired(self, now: float) -> list[Stream[P]]:
        """Remove and return the streams whose idle deadline has passed."""
        gone = [s for s in self._streams.values() if s.expired(now)]
        for stream in gone:
            del self._streams[stream.stream_id]
        return gone
