"""Answers made on worker and prepare threads, carried to the model manager's socket thread.

ZeroMQ sockets are not thread-safe, so only the socket thread may send on the links to the
agents. A thread that answers a job pushes the answer on a PUSH socket of its own (made at
its first answer); the socket thread pulls every answer from one PULL socket and sends it
on. The PULL's inproc endpoint is named after the manager's instance, so two managers in
one process (tests, say) never share it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import zmq

from model_manager import link_protocol as link

ENDPOINT = "inproc://model-manager-results-{instance}"


@dataclass(frozen=True)
class Answer:
    """One answer for an agent: its key, the job it answers, and the encoded message."""

    identity: bytes
    job_id: str
    body: bytes


class ResultPipe:
    def __init__(self, context: zmq.Context, instance: str) -> None:
        self._context = context
        self._endpoint = ENDPOINT.format(instance=instance)
        self._local = threading.local()
        self._pull: zmq.Socket | None = None

    def open(self) -> zmq.Socket:
        """Bind the socket thread's end; poll it for `take`."""
        self._pull = self._context.socket(zmq.PULL)
        self._pull.bind(self._endpoint)
        return self._pull

    def push(self, identity: bytes, job_id: str, message: dict[str, Any]) -> None:
        """Send an answer to the socket thread; from any thread."""
        push = getattr(self._local, "push", None)
        if push is None:
            push = self._local.push = self._context.socket(zmq.PUSH)
            push.connect(self._endpoint)
        push.send_multipart([identity, str(job_id).encode(), link.encode(message)[1]])

    def take(self) -> Iterator[Answer]:
        """The answers that have arrived, without waiting; on the socket thread."""
        assert self._pull is not None, "open() first"
        while True:
            try:
                identity, job_id, body = self._pull.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            yield Answer(identity, job_id.decode(), body)

    def close(self) -> None:
        if self._pull is not None:
            self._pull.close(linger=0)
