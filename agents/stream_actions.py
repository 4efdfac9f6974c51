"""The `stream` and `next_chunk` actions: one request's outputs (TTS audio chunks), each made
by a job of its own and read back in order, one `next_chunk` call per chunk.

Contract:
- `stream` packs the job of every piece before the stream opens, so a refusal (a field that
  cannot be forwarded, too many streams open, an id already open) leaves no half stream;
  then the driver (agents/stream_driver.py) sends the jobs as the stream's buffer allows,
  and the client hears `streaming` with the stream's request_id and its number of chunks.
- A stream takes no `output_path`: its chunks go back to the client, never to a file.
- `next_chunk` hands the read to the driver: answered with the next chunk when it is ready.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from agents.intake import Prepared
from agents.options import request_key, required
from agents.sinks import ClientCall, ReplySink, Send
from agents.stream_driver import StreamDriver, StreamJob
from agents.streams import Stream
from agents.work import Work
from model_manager.batcher import INTERACTIVE
from model_manager.config import Limits
from model_manager.errors import INVALID_FIELD, BusError


class StreamActions:
    def __init__(self, limits: Limits, work: Work, driver: StreamDriver, send: Send) -> None:
        self.limits = limits
        self.work = work
        self.driver = driver
        self._send = send

    def stream(self, call: ClientCall, prepared: Prepared) -> None:
        item = prepared.items[0]
        if item.fields.get("output_path") is not None:
            raise BusError(INVALID_FIELD, "stream does not take output_path; use synthesize for a file")
        request_id = request_key(item.fields.get("request_id") or uuid.uuid4().hex)
        fields = {**item.fields, "request_id": request_id}
        stream: Stream[StreamJob] = Stream.open(
            request_id, time.monotonic(), self.limits.stream_idle_s, self.limits.stream_buffer
        )
        for piece in prepared.pieces:
            # Only packed here: the driver gives each job its deadline and sink when it sends it.
            job = self.work.new_job(uuid.uuid4().hex, fields, piece, _NO_SINK, INTERACTIVE)
            stream.add_job(job.job_id, StreamJob(job.message, job.body or b"", fields))
        stream.end_input()
        self.driver.open(stream)
        self._send(call, {"status": "streaming", "request_id": request_id, "num_chunks": stream.num_outputs})

    def next_chunk(self, call: ClientCall, prepared: Prepared) -> None:
        self.driver.read(call, request_key(required(prepared.message, "request_id")))


class _NoSink(ReplySink):
    """Placeholder of a stream job not released yet (its real sink is made on release)."""

    def deliver(self, entry: dict[str, Any]) -> None:  # pragma: no cover - never delivered
        raise AssertionError("a stream job was answered before it was released")


_NO_SINK = _NoSink()
