"""The STT agent's live streams on its sockets: the `LiveHost` that agents/live/streams.py
runs on, and the handlers of the live actions (`stream_open`, `stream_audio`, `next_event`,
`stream_close`).

`LiveStreams` decides everything about a live stream; this adapter only lends it the
agent's means. Contract:
- `send` puts a reply on the client socket;
- `submit_decode` makes a decode an in-flight job like any other (deadline, model manager,
  resends), whose outcome (a `Decoded`, or the BusError that ended it) goes to `on_answer`
  once; a final is retried when a manager turns it away for now, as its client cannot
  resend it, while a partial is not (a newer one covers its audio);
- `drop_jobs` forgets jobs unanswered and cancels them at their model manager;
- each handler reads the request_id and the clock and hands the call to `streams`;
  `stream_open` checks the stream's options and model at once, since a stream's partials
  would fail silently later;
- `on_worker` hands `streams` the chunks its worker threads (VAD, decoding) have finished.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import zmq

from agents.inflight import InFlight
from agents.intake import Prepared
from agents.live.decodes import FINAL_PRIORITY, DecodeOutcome
from agents.live.settings import LiveSettings
from agents.live.streams import LiveStreams
from agents.live.worker import DEFAULT_LANES, OffThread
from agents.options import check_options, request_key, required
from agents.sinks import ClientCall, DecodeReply, Send
from agents.work import Work
from model_manager.config import Config


class LiveStreamHost:
    def __init__(self, context: zmq.Context, config: Config, send: Send, model_for: Callable[[object], str],
                 inflight: InFlight, work: Callable[[], Work]) -> None:
        self._send = send
        self._model_for = model_for
        self.inflight = inflight
        # The work actions take the live streams (for `cancel`), so they are made after
        # them: they are reached through this.
        self._work = work
        worker = OffThread(context, lanes=config.limits.stream_vad_threads or DEFAULT_LANES)
        self.streams = LiveStreams(self, worker, live_settings(config))

    # --- the actions ----------------------------------------------------------------------

    def open(self, call: ClientCall, prepared: Prepared) -> None:
        check_options(prepared.message)
        self._model_for(prepared.message.get("model_pref"))
        request_id = request_key(prepared.message.get("request_id") or uuid.uuid4().hex)
        self.streams.open(call, prepared.message, request_id, time.monotonic())

    def audio(self, call: ClientCall, prepared: Prepared) -> None:
        request_id = request_key(required(prepared.message, "request_id"))
        self.streams.audio(call, prepared.message, request_id, time.monotonic())

    def next_event(self, call: ClientCall, prepared: Prepared) -> None:
        request_id = request_key(required(prepared.message, "request_id"))
        self.streams.next_event(call, prepared.message, request_id, time.monotonic())

    def close(self, call: ClientCall, prepared: Prepared) -> None:
        self.streams.close(call, request_key(required(prepared.message, "request_id")), time.monotonic())

    def on_worker(self) -> None:
        self.streams.on_worker(self.streams.worker.drain(), time.monotonic())

    # --- LiveHost -------------------------------------------------------------------------

    def send(self, call: ClientCall, reply: dict[str, Any]) -> None:
        self._send(call, reply)

    def submit_decode(self, job_id: str, fields: dict[str, Any], request: dict[str, Any], priority: int,
                      timeout_ms: int, target_ms: int, on_answer: Callable[[DecodeOutcome], None]) -> None:
        work = self._work()
        sink = DecodeReply(on_answer, retries=priority == FINAL_PRIORITY)
        work.submit(work.job(job_id, fields, request, sink, priority, timeout_ms, target_ms))

    def drop_jobs(self, job_ids: list[str]) -> None:
        gone = set(job_ids)
        self._work().cancel_at_model_manager(self.inflight.drop(lambda job: job.job_id in gone))


def live_settings(config: Config) -> LiveSettings:
    limits = config.limits
    return LiveSettings(max_open_streams=limits.max_open_streams, idle_timeout_s=limits.stream_idle_s,
                        max_audio_seconds=limits.max_audio_seconds, max_chunk_s=limits.stream_max_chunk_s,
                        hangup_grace_s=limits.stream_hangup_grace_s,
                        request_timeout_ms=limits.request_timeout_ms)
