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
1.00, and the long text's pieces almost nothing. So the worker bounds it (scheduler.py,
LONG_LANE_PATIENCE): a long batch slowed past 30 times its time alone (and 30 s) makes the
short lane wait for it.

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
from typing import Literal, TypeVar

log = logging.getLogger(__name__)

Lane = Literal["short", "long"]
SHORT: Lane = "short"
LONG: Lane = "long"
#: The long lane's nice value: the lowest priority, so short work on the same cores loses
#: nothing measurable to it (see the module docstring).
LONG_LANE_NICE = 19

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
