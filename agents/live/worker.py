"""Worker threads for the CPU work of live streams: audio decoding, resampling and VAD.

The agent's socket loop must stay free for heartbeats and other clients, so each
`stream_audio` chunk is decoded and run through its stream's VAD here, off that thread.
Contract of `OffThread`:
- `submit(ticket, work, lane)` queues `work` (a callable) and returns at once; the tasks of
  one lane run one at a time, in submission order, on that lane's thread, so a stream
  (which always uses the same lane) has its chunks reach its VAD in order. Lanes run in
  parallel: the VAD's ONNX run releases the GIL, so one agent's streams are not bounded by
  one core (Silero costs about 1 ms per 100 ms chunk, so one lane carries about 100 streams);
- when a task finishes, a `Finished` (its ticket and outcome) is queued and one byte goes
  out on an inproc PUSH socket: the loop polls `wake`, then `drain()` returns the finished
  tasks in the order they finished (per lane, the order they were submitted), on the loop's
  thread. The outcome is the task's return value, or the exception it raised (never lost,
  never raised on a worker thread);
- `close()` stops the threads after the tasks already queued.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import zmq

log = logging.getLogger(__name__)

T = TypeVar("T")  # what the caller tells its tasks apart by
R = TypeVar("R")  # what a task returns


@dataclass(frozen=True)
class Finished(Generic[T, R]):
    """A task that has run: the ticket it was submitted with, and what it returned or raised."""

    ticket: T
    outcome: R | Exception


#: Lanes when the caller does not say: one per core, up to 4 (on a GPU box the VAD of a
#: few hundred streams; on a small CPU box the cores are Whisper's anyway).
DEFAULT_LANES = max(1, min(4, os.cpu_count() or 1))


class OffThread(Generic[T, R]):
    def __init__(self, context: zmq.Context, name: str = "live-vad", lanes: int = DEFAULT_LANES) -> None:
        if lanes < 1:
            raise ValueError(f"lanes must be at least 1, got {lanes}")
        self.lanes = lanes
        self.endpoint = f"inproc://{name}-{uuid.uuid4().hex}"
        self.wake = context.socket(zmq.PULL)
        self.wake.bind(self.endpoint)
        self._done: queue.Queue[Finished[T, R]] = queue.Queue()
        self._tasks: list[queue.Queue[tuple[T, Callable[[], R]] | None]] = [
            queue.Queue() for _ in range(lanes)]
        self._pushes = []  # one per lane, each used by its own thread only
        for _ in range(lanes):
            push = context.socket(zmq.PUSH)
            push.setsockopt(zmq.LINGER, 0)
            push.connect(self.endpoint)
            self._pushes.append(push)
        self._threads = [threading.Thread(target=self._run, args=(lane,), name=f"{name}-{lane}", daemon=True)
                         for lane in range(lanes)]
        for thread in self._threads:
            thread.start()

    def submit(self, ticket: T, work: Callable[[], R], lane: int = 0) -> None:
        self._tasks[lane % self.lanes].put((ticket, work))

    def drain(self) -> list[Finished[T, R]]:
        while True:
            try:
                self.wake.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
        finished: list[Finished[T, R]] = []
        while True:
            try:
                finished.append(self._done.get_nowait())
            except queue.Empty:
                return finished

    def close(self) -> None:
        for tasks in self._tasks:
            tasks.put(None)
        for thread in self._threads:
            thread.join(timeout=5.0)
        for push in self._pushes:
            push.close()
        self.wake.close(linger=0)

    def _run(self, lane: int) -> None:
        tasks, push = self._tasks[lane], self._pushes[lane]
        while (task := tasks.get()) is not None:
            ticket, work = task
            outcome: R | Exception
            try:
                outcome = work()
            except Exception as exc:  # handed to the loop, which answers the client
                outcome = exc
            self._done.put(Finished(ticket, outcome))
            try:
                push.send(b"", zmq.NOBLOCK)
            except zmq.Again:  # the loop has wake-ups queued already; it will drain this too
                pass
