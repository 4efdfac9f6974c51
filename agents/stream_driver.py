"""Open streams on the wire: sending their jobs, answering their readers, closing them.

`streams.py` decides (pure); this module acts on its decisions with the agent's own
callbacks: `submit` an in-flight job, `send` a client reply, `cancel` jobs at the model
manager. It knows nothing of what a stream's outputs are: TTS chunks today, live STT events
next (those are `push`ed into the stream and read the same way).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agents.inflight import DEADLINE_GRACE_S, InFlight, InFlightJob
from agents.sinks import ClientCall, Send, StreamReply
from agents.streams import Stream, StreamRegistry
from model_manager import protocol
from model_manager.errors import INVALID_FIELD, NOT_FOUND, SHUTTING_DOWN, BusError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamJob:
    """A stream's job before it is released: its "infer" message, packed, and the client
    fields its output is rendered with."""

    message: dict[str, Any]
    body: bytes
    fields: dict[str, Any]


class StreamDriver:
    def __init__(self, registry: StreamRegistry[StreamJob], inflight: InFlight,
                 submit: Callable[[InFlightJob], None], send: Send,
                 cancel: Callable[[list[str]], None], stopping: Callable[[], bool]) -> None:
        self.registry = registry
        self.inflight = inflight
        self._submit = submit
        self._send = send
        self._cancel = cancel
        self._stopping = stopping

    def open(self, stream: Stream[StreamJob]) -> None:
        """Register `stream` (BusError when too many are open, or its id is) and start it."""
        self.registry.add(stream)
        self.pump(stream)

    def pump(self, stream: Stream[StreamJob]) -> None:
        """Send the stream's next jobs, as many as its buffer allows."""
        for released in stream.release():
            job_id, job = released.job_id, released.payload
            if self._stopping():
                failure = BusError(SHUTTING_DOWN, "the agent shut down before this output was made")
                stream.fulfil(job_id, protocol.error_reply(failure, stream.stream_id))
                continue
            deadline = time.monotonic() + job.message["timeout_ms"] / 1000.0 + DEADLINE_GRACE_S
            sink = StreamReply(stream, job_id, self.on_output)
            self._submit(InFlightJob(job_id, job.message, deadline, sink, job.fields, job.body))

    def on_output(self, stream: Stream[Any]) -> None:
        """An output came in: make room for the next job, answer a waiting reader."""
        if self.registry.get(stream.stream_id) is not stream:
            return  # cancelled or expired meanwhile
        self.pump(stream)
        self.deliver(stream)

    def read(self, call: ClientCall, stream_id: str) -> None:
        """A read call (`next_chunk`): answered now if the next output is ready, else when it is."""
        stream = self.registry.get(stream_id)
        if stream is None:
            raise BusError(NOT_FOUND, f"no open stream {stream_id!r}: unknown, finished, or expired")
        if stream.reader is not None:
            raise BusError(INVALID_FIELD, f"a read of stream {stream_id!r} is already waiting")
        stream.reader = call
        self.deliver(stream)

    def deliver(self, stream: Stream[Any]) -> None:
        if stream.reader is None:
            return
        taken = stream.take(time.monotonic())
        if taken is None:
            return
        reader, stream.reader = stream.reader, None
        self._send(reader, {**taken.output, "index": taken.index, "final": taken.final})
        if taken.final:
            self.registry.close(stream.stream_id)
        else:
            self.pump(stream)  # a read makes room in the stream's buffer

    def close(self, stream_id: str, reason: BusError) -> bool:
        """Close a stream: its unmade outputs never run, a waiting reader gets `reason`."""
        stream = self.registry.close(stream_id)
        if stream is None:
            return False
        self._drop(stream)
        if stream.reader is not None:
            self._send(stream.reader, protocol.error_reply(reason, stream_id))
        return True

    def expire(self, now: float) -> None:
        for stream in self.registry.expired(now):
            log.info("stream %s expired unread; its unmade outputs are cancelled", stream.stream_id)
            self._drop(stream)

    def readers_waiting(self) -> bool:
        return any(s.reader is not None for s in self.registry)

    def client_gone(self, routing_id: bytes) -> None:
        for stream in self.registry:
            if stream.reader is not None and stream.reader.routing_id == routing_id:
                stream.reader = None  # its client may come back for the output on a new socket

    def answer_readers(self, reason: BusError) -> None:
        for stream in self.registry:
            if stream.reader is not None:
                self._send(stream.reader, protocol.error_reply(reason, stream.stream_id))

    def _drop(self, stream: Stream[Any]) -> None:
        jobs = set(stream.cancel())
        self.inflight.drop(lambda job: job.job_id in jobs)
        self._cancel(sorted(jobs))
