"""A worker thread for the CPU work of live streams: audio decoding, resampling and VAD.

The agent's socket loop must stay free for heartbeats and other clients, so each
`stream_audio` chunk is decoded and run through its stream's VAD here, off that thread.
Contract of `OffThread`:
- `submit(ticket, work)` queues `work` (a callable) and returns at once; tasks run one at a
  time, in submission order, so a stream's chunks reach its VAD in order;
- when a task finishes, its `(ticket, outcome)` is queued and one byte goes out on an
  inproc PUSH socket: the loop polls `wake`, then `drain()` returns the finished tasks in
  order, on the loop's thread. The outcome is the task's return value, or the exception
  it raised (never lost, never raised on the worker thread);
- `close()` stops the thread after the tasks already queued.
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from collections.abc import Callable
from typing import Any

import zmq

log = logging.getLogger(__name__)

Work = Callable[[], Any]


class OffThread:
    def __init__(self, context: zmq.Context, name: str = "live-vad") -> None:
        self.endpoint = f"inproc://{name}-{uuid.uuid4().hex}"
        self.wake = context.socket(zmq.PULL)
        self.wake.bind(self.endpoint)
        self._push = context.socket(zmq.PUSH)  # used by the worker thread only
        self._push.setsockopt(zmq.LINGER, 0)
        self._push.connect(self.endpoint)
        self._tasks: queue.Queue[tuple[Any, Work] | None] = queue.Queue()
        self._done: queue.Queue[tuple[Any, Any]] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, ticket: Any, work: Work) -> None:
        self._tasks.put((ticket, work))

    def drain(self) -> list[tuple[Any, Any]]:
        while True:
            try:
                self.wake.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
        finished = []
        while True:
            try:
                finished.append(self._done.get_nowait())
            except queue.Empty:
                return finished

    def close(self) -> None:
        self._tasks.put(None)
        self._thread.join(timeout=5.0)
        self._push.close()
        self.wake.close(linger=0)

    def _run(self) -> None:
        while (task := self._tasks.get()) is not None:
            ticket, work = task
            try:
                outcome = work()
            except Exception as exc:  # handed to the loop, which answers the client
                outcome = exc
            self._done.put((ticket, outcome))
            try:
                self._push.send(b"", zmq.NOBLOCK)
            except zmq.Again:  # the loop has wake-ups queued already; it will drain this too
                pass
