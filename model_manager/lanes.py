"""Lanes: short requests and long requests' units run on separate threads, and on a CPU the
OS gives the cores to the short ones first.

A Whisper window or a Kokoro piece, once started, runs to its end. On a GPU that is
milliseconds; on a CPU it is one to a few seconds, and a voice command that arrives then
would wait for it however the queue is ordered. So a model can have a *long lane*: a second
copy of the engine, on its own worker thread, that runs only the units of split requests
(long recordings' 30 s windows, long texts' pieces), while the *short lane* runs every
request that runs whole. The two run at the same time; the long lane's threads have the
lowest scheduling priority (nice 19), so the kernel preempts them whenever the short lane's
threads (of this model or of any other in the process) want a core, and gives them every
cycle the short lane leaves. Measured on two cores (`scripts/lane_priority.py`, 3 rounds,
docs/benchmarks.md): batches of four voice commands took 0.80-1.08x their time alone beside
a long recording decoded at nice 19, against 1.12-1.56x beside it at the same priority;
batches of four TTS replies 0.90-1.04x against 2.19-2.28x. The price is the long work's
share: beside back-to-back short batches the recording got 0.56 windows a second instead of
1.00, and the long text's pieces almost nothing. So a long batch has a patience
(LONG_LANE_PATIENCE, kept by `LaneBook`): slowed past 30 times its time alone (and 30 s), it
makes the short lane wait for it.

Linux keeps the nice value per thread, and a new thread starts with its creator's. So the
copy is built on a thread that lowered its own priority first, and the threads its runtime
makes (CTranslate2's workers, onnxruntime's pool) inherit it; the lane's worker thread lowers
its own too, since onnxruntime also computes on the calling thread. An unprivileged process
cannot raise a priority again, which is why neither is ever done on a thread that lives on.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

log = logging.getLogger(__name__)

Lane = Literal["short", "long"]
SHORT: Lane = "short"
LONG: Lane = "long"
#: The long lane's nice value: the lowest priority, so short work on the same cores loses
#: nothing measurable to it (see the module docstring).
LONG_LANE_NICE = 19
#: A long-lane batch may take this many times what it takes alone (when short requests keep
#: every core busy, the OS gives it almost nothing), and at least LONG_LANE_PATIENCE_MIN_S;
#: past that, the short lane waits for it. Only a floor against starvation: in the mixed
#: benchmark on two cores, a batch of two 30 s windows took 10-13 s beside short work (about
#: 10x alone), and a patience of 10 s held voice commands behind it (p95 2.1 s in that round
#: against 0.5 s alone).
LONG_LANE_PATIENCE = 30.0
#: Seconds; also what a batch whose time alone is not measured yet gets.
LONG_LANE_PATIENCE_MIN_S = 30.0

T = TypeVar("T")


def wants_long_lane(setting: bool | Literal["auto"], device: str) -> bool:
    """Whether a model gets a long lane: `long_lane` as configured; "auto" means on a CPU,
    where a unit takes seconds (on a GPU a unit takes milliseconds, and a second copy of
    the model would cost its memory for nothing)."""
    return device == "cpu" if setting == "auto" else setting


def lower_priority(nice: int = LONG_LANE_NICE) -> bool:
    """Give the calling thread, and the threads it starts from now on, the scheduling
    priority `nice`. False where the OS refuses or has no per-thread priority: the lane
    still separates the work, only without the OS's preemption."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (OSError, AttributeError) as exc:
        log.warning("could not lower this thread's priority to nice %d: %s", nice, exc)
        return False
    return True


def thread_nice() -> int:
    """The calling thread's nice value."""
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def build_at_low_priority(build: Callable[[], T], nice: int = LONG_LANE_NICE) -> T:
    """`build()` run on a fresh thread with priority `nice`, so the threads it starts have
    that priority too; its result, or its exception re-raised here."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        lower_priority(nice)
        try:
            outcome.append(build())
        except BaseException as exc:  # re-raised on the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="long-lane-build")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]


@dataclass
class LaneBook:
    """What one model's lanes are doing: pure, the worker holds its lock around every call
    and passes the time in.

    - `started(lane, now, alone_s)` / `finished(lane, now)` bracket every batch; `alone_s` is
      about what a long batch takes with the cores to itself.
    - `idle_since(lane)`: when the lane's last batch ended, while none runs; None while one
      does (the batcher's fast path asks it).
    - `short_lane_waits(now)`: whether the running long batch is past its patience, so the
      short lane is to start nothing new until it ends (`yields` counts the times it did).
    - `measure_long()` at a long batch's start; asked once it ran, whether its time measured
      its size: only if the short lane ran nothing meanwhile, else the time says how busy
      the short lane was.
    """

    lanes: tuple[Lane, ...] = (SHORT,)
    busy: dict[Lane, int] = field(init=False)
    yields: int = 0
    _ended: dict[Lane, float] = field(init=False)
    _short_batches: int = 0
    _long_overdue_at: float | None = None

    def __post_init__(self) -> None:
        self.busy = {lane: 0 for lane in self.lanes}
        self._ended = {lane: float("-inf") for lane in self.lanes}

    def started(self, lane: Lane, now: float, alone_s: float = 0.0) -> None:
        self.busy[lane] += 1
        if lane == SHORT:
            self._short_batches += 1
        else:
            self._long_overdue_at = now + max(LONG_LANE_PATIENCE * alone_s, LONG_LANE_PATIENCE_MIN_S)

    def finished(self, lane: Lane, now: float) -> None:
        self.busy[lane] -= 1
        if lane == LONG:
            self._long_overdue_at = None
        if self.busy[lane] == 0:
            self._ended[lane] = now

    def idle_since(self, lane: Lane) -> float | None:
        return self._ended[lane] if self.busy[lane] == 0 else None

    def short_lane_waits(self, now: float) -> bool:
        return self._long_overdue_at is not None and now >= self._long_overdue_at

    def measure_long(self) -> Callable[[], bool]:
        idle, started = self.busy.get(SHORT, 0) == 0, self._short_batches
        return lambda: idle and self._short_batches == started
