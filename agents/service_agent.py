"""A service agent: the socket loop between clients and the ModelManagerAgent.

Clients connect plain zmq REQ (or DEALER) sockets to the agent's ROUTER socket. ROUTER,
unlike REP, lets the agent keep many clients' requests in flight at once, which is what lets
the model manager batch across clients. Each request is checked (agents/intake.py: off this
thread when big), handed to a model manager through the agent's backend (agents/backend.py:
model managers connect out to it, and each job goes to a live one holding its model, within
its credit), and answered when the result comes back through its reply sink (agents/sinks.py).

This module only moves messages; the parts it drives each do one job:
- agents/intake.py      decoding and checking client frames, off the socket thread when big
- agents/work.py        the work actions: single, batch, queue_for_batch, get_result, cancel
- agents/inflight.py    the jobs at the model manager, with their deadlines and retries
- agents/sinks.py       where each job's answer goes (a client, a batch, the journal, a stream)
- agents/streams.py     the pure state machine of open streams; stream_driver.py acts on it
- agents/live/          live speech-to-text: VAD, endpointing, commit policy, stream sessions
- agents/control.py     health, stats, configure, voices
- agents/results.py     the SQLite journal of queue_for_batch jobs and results

Guarantees (see docs/protocol.md):
- every request gets exactly one reply: a result, or an error with a code; an unexpected
  exception while handling one is an `internal_error` reply with its cause, logged with its
  traceback, and the agent serves on;
- nothing waits forever: a request unanswered after its timeout gets a "timeout" error, and
  a job waits for a model manager holding its model, within its deadline and the model
  wait bound (then model_unavailable); a lost manager's jobs go to another;
- a `queue_for_batch` job is journaled before "queued" goes out, so a restarted agent
  resubmits it, and its result stays fetchable across restarts.

Run: ``python -m agents.service_agent stt`` (or ``tts``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from agents import security
from agents.backend import Backend
from agents.connections import MONITOR_EVENTS, ConnectionTracker, drain_monitor, message_fd
from agents.control import (
    AgentCounters,
    ControlCall,
    ModelManagerView,
    agent_stats,
    configure_message,
    control_reply,
    health_reply,
    voices_reply,
)
from agents.inflight import InFlight
from agents.intake import Intake, Prepared
from agents.live.streams import FINAL_PRIORITY, LiveSettings, LiveStreams
from agents.live.worker import DEFAULT_LANES, OffThread
from agents.metrics import AgentMetrics
from agents.options import check_options, echoable, request_key, required
from agents.results import ResultStore
from agents.services import SERVICES, Service
from agents.sinks import CallbackReply, ClientCall, ReplySink
from agents.stream_driver import StreamDriver, StreamJob
from agents.streams import Stream, StreamRegistry
from agents.work import Work
from model_manager import protocol
from model_manager.batcher import INTERACTIVE
from model_manager.config import Config, load_config
from model_manager.errors import (
    BAD_REQUEST,
    INVALID_FIELD,
    MESSAGE_TOO_LARGE,
    MISSING_FIELD,
    MODEL_UNAVAILABLE,
    SHUTTING_DOWN,
    TIMEOUT,
    UNKNOWN_ACTION,
    BusError,
    internal_error,
)
from model_manager.protocol import Encoding
from model_manager.runtime import exit_on_config_error, setup_logging, stop_on_signals

log = logging.getLogger(__name__)

POLL_MS = 50
PING_INTERVAL_S = protocol.PING_INTERVAL_S
# ZMQ_MAXMSGSIZE sits this far above limits.max_message_bytes: frames in between get a
# message_too_large reply; only beyond it does ZeroMQ drop the connection, so that a huge
# frame never fills memory.
HARD_MESSAGE_CAP_FACTOR = 2
# Expired results are deleted from the journal at most this often.
PURGE_INTERVAL_S = 1.0
SHUTDOWN_GRACE_S = 30.0
STATS_TIMEOUT_S = 2.0
#: Actions that start no new work, still answered while the agent drains for shutdown.
SERVED_WHILE_STOPPING = frozenset({"health", "stats", "get_result", "next_chunk", "voices", "cancel",
                                   "next_event", "stream_close"})

Handler = Callable[[ClientCall, Prepared], None]


class ServiceAgent:
    def __init__(
        self, service: Service, config: Config, context: zmq.Context | None = None, port: int | None = None
    ) -> None:
        self.service = service
        self.config = config
        self.limits = config.limits
        self.context = context or zmq.Context.instance()
        self.port = port or (
            config.endpoints.stt_port if service.task == "stt" else config.endpoints.tts_port
        )
        self.results = ResultStore(config.limits.result_ttl_s, journal_path(config, service.task, self.port))
        self.inflight = InFlight()
        self.streams: StreamRegistry[StreamJob] = StreamRegistry(config.limits.max_open_streams)
        # The work actions need the link, made in serve(): the driver reaches them through it.
        self.stream_driver = StreamDriver(
            self.streams, self.inflight, lambda job: self.work.submit(job), self._send,
            lambda job_ids: self.work.cancel_at_model_manager(job_ids), lambda: self.stopping,
        )
        self.control: dict[str, ControlCall] = {}
        self.counters = AgentCounters()
        self.connections = ConnectionTracker()
        self.live: LiveStreams | None = None  # the STT agent's live streams, from serve()
        self.stopping = False
        self.next_purge = 0.0

    # --- the loop -----------------------------------------------------------------------

    def serve(self, stop: threading.Event) -> None:
        self.front = self.context.socket(zmq.ROUTER)
        self.front.setsockopt(zmq.MAXMSGSIZE, HARD_MESSAGE_CAP_FACTOR * self.limits.max_message_bytes)
        self.front.setsockopt(zmq.LINGER, 1000)
        authenticator = security.secure_server_socket(self.front, self.context, self.config.security)
        self.front_monitor = self.front.get_monitor_socket(MONITOR_EVENTS)
        self.front.bind(f"tcp://{self.config.endpoints.host}:{self.port}")
        self.backend = Backend(self.config, self.service.task, self.inflight,
                               lambda job, outcome: self.work.answer(job, outcome), self._answer_control)
        self.intake = Intake(self.context, self.service, self.limits)
        poller = zmq.Poller()
        for sock in (self.front, self.backend.socket, self.front_monitor, self.intake.wake):
            poller.register(sock, zmq.POLLIN)
        if self.service.task == "stt":
            worker = OffThread(self.context, lanes=self.config.limits.stream_vad_threads or DEFAULT_LANES)
            self.live = LiveStreams(self, worker, live_settings(self.config))
            poller.register(self.live.worker.wake, zmq.POLLIN)
        self.work = Work(self.service, self.limits, self.inflight, self.backend, self.results, self._send,
                         self.stream_driver, self.live)
        log.info("%s agent listening on %s:%d; model managers connect to %s", self.service.task,
                 self.config.endpoints.host, self.port, self.backend.address)
        self.metrics = AgentMetrics(self.service.task, self.backend.configured)
        exporter = self.metrics.start(self.config, self.service.task)
        self.work.recover_journal()
        shutdown_by = float("inf")
        try:
            while True:
                now = time.monotonic()
                if stop.is_set() and not self.stopping:
                    self.stopping = True
                    shutdown_by = now + SHUTDOWN_GRACE_S
                    log.info("shutting down: %d requests at model managers will finish", len(self.inflight))
                if self.stopping:
                    # Every turn, not once: a job a draining or lost manager gives back comes
                    # into the waiting line after the stop, and no manager will take it now.
                    self._guarded(self._refuse_waiting_work)
                if self.stopping and (not self._clients_waiting() or now >= shutdown_by):
                    break
                for sock, _ in poller.poll(POLL_MS):
                    if sock is self.front:
                        self._guarded(self._receive_client)
                    elif sock is self.backend.socket:
                        self._guarded(self.backend.receive)
                    elif sock is self.intake.wake:
                        self._guarded(lambda: self.intake.drain(self._on_prepared))
                    elif self.live is not None and sock is self.live.worker.wake:
                        self._guarded(self._on_live_worker)
                    else:
                        self._guarded(lambda: drain_monitor(self.front_monitor, self.connections,
                                                            self._client_gone))
                self._guarded(lambda: self._tick(time.monotonic()))
            self._answer_clients_at_shutdown()
        finally:
            self.intake.close()
            if self.live is not None:
                self.live.worker.close()
            self.front.disable_monitor()
            self.front_monitor.close()
            self.front.close()
            self.backend.close()
            if exporter is not None:
                exporter.close()
            self.results.close()
            if authenticator is not None:
                authenticator.stop()

    def _guarded(self, step: Callable[[], None]) -> None:
        """A bug in one step costs that step, never the agent: each client request has a
        guard of its own that answers it (`_on_client`, `_on_prepared`, `Work.render`)."""
        try:
            step()
        except Exception:
            log.exception("unexpected error in the agent loop; serving on")

    def _clients_waiting(self) -> bool:
        return (self.inflight.waiting_clients() or bool(self.control) or self.intake.in_progress > 0
                or self.stream_driver.readers_waiting()
                or (self.live is not None and self.live.waiting_clients()))

    def _refuse_waiting_work(self) -> None:
        """Work no model manager holds yet will not run before this agent stops: its clients
        hear so at once. Journaled queue_for_batch jobs stay pending for the next start."""
        gone = BusError(SHUTTING_DOWN, "the agent is shutting down; this request had not started")
        for job_id in self.backend.waiting():
            job = self.inflight.get(job_id)
            if job is not None and job.sink.owner is not None:
                self.inflight.pop(job_id)
                self.backend.forget(job_id)
                job.sink.deliver(protocol.error_reply(gone, job.fields.get("request_id")))

    def _answer_clients_at_shutdown(self) -> None:
        # Journaled queue_for_batch jobs stay pending: the next start resubmits them.
        gone = BusError(SHUTTING_DOWN, "the agent shut down before this request finished")
        for job in self.inflight:
            if job.sink.owner is not None:
                self.inflight.pop(job.job_id)
                job.sink.deliver(protocol.error_reply(gone, job.fields.get("request_id")))
        self.stream_driver.answer_readers(gone)
        if self.live is not None:
            self.live.stop(gone)

    def _send(self, call: ClientCall, reply: dict[str, Any]) -> None:
        if reply.get("status") == "error":
            self.counters.errors[reply["error"]["code"]] += 1
        try:
            body = protocol.encode_reply(reply, call.encoding)
        except Exception as exc:  # a reply the encoding cannot carry must still be answered
            log.exception("cannot encode a reply")
            failure = internal_error(exc, "the reply could not be encoded")
            body = protocol.encode_reply(protocol.error_reply(failure), call.encoding)
        try:
            self.front.send_multipart([*call.envelope, body])
        except zmq.ZMQError as exc:
            log.warning("cannot reply to a client: %s", exc)

    # --- client side ----------------------------------------------------------------------

    def _receive_client(self) -> None:
        # Connection events first (see agents/connections.py): then the message's descriptor
        # is known to belong to its sender's connection, or known to be closed.
        drain_monitor(self.front_monitor, self.connections, self._client_gone)
        frames = self.front.recv_multipart(copy=False)
        raw = [frame.bytes for frame in frames]
        if not self.connections.message(message_fd(frames[0]), raw[0]):
            self.counters.dropped_for_gone_clients += 1  # sent just before its client hung up
            return
        self._on_client(raw)

    def _on_client(self, frames: list[bytes]) -> None:
        # REQ clients put an empty delimiter after their identity; DEALER clients may not.
        split = frames.index(b"") + 1 if b"" in frames else 1
        envelope, body = frames[:split], frames[split:]
        call = ClientCall(envelope, Encoding.JSON)
        try:
            if len(body) != 1:
                raise BusError(BAD_REQUEST, f"expected one body frame, got {len(body)}")
            call.encoding = protocol.sniff_encoding(body[0])
            if len(body[0]) > self.limits.max_message_bytes:
                raise BusError(
                    MESSAGE_TOO_LARGE,
                    f"the request is {len(body[0])} bytes; the limit is {self.limits.max_message_bytes}",
                )
            self.intake.submit(call, body[0], self._on_prepared)
        except BusError as exc:
            self._send(call, protocol.error_reply(exc, call.request_id))
        except Exception as exc:  # a bug must cost one request, not the agent
            log.exception("unexpected error handling a request")
            self._send(call, protocol.error_reply(internal_error(exc), call.request_id))

    def _on_prepared(self, call: ClientCall, prepared: Prepared | BusError) -> None:
        try:
            if isinstance(prepared, BusError):
                raise prepared
            call.encoding = prepared.encoding
            call.request_id = echoable(prepared.message.get("request_id"))
            self._dispatch(call, prepared)
        except BusError as exc:
            self._send(call, protocol.error_reply(exc, call.request_id))
        except Exception as exc:  # a bug must cost one request, not the agent
            log.exception("unexpected error handling a request")
            self._send(call, protocol.error_reply(internal_error(exc), call.request_id))

    def _handlers(self) -> dict[str, Handler]:
        svc = self.service
        handlers: dict[str, Handler] = {
            "health": self._health,
            "stats": self._stats,
            "get_result": self.work.get_result,
            "cancel": self.work.cancel,
            "configure": self._configure,
            svc.single_action: self.work.single,
            "queue_for_batch": self.work.queue_for_batch,
            svc.batch_action: self.work.batch,
        }
        if svc.split_for_stream is not None:
            handlers.update(stream=self._stream, next_chunk=self._next_chunk)
        if svc.task == "tts":
            handlers["voices"] = self._voices
        if self.live is not None:
            handlers.update(stream_open=self._live_open, stream_audio=self._live_audio,
                            next_event=self._live_next_event, stream_close=self._live_close)
        return handlers

    def _dispatch(self, call: ClientCall, prepared: Prepared) -> None:
        action = prepared.message.get("action")
        if action is None:
            raise BusError(MISSING_FIELD, "action is required")
        handlers = self._handlers()
        handler = handlers.get(action) if isinstance(action, str) else None
        # Unknown actions share one counter, so that garbage cannot grow the table.
        self.counters.by_action[action if handler is not None else "<unknown>"] += 1
        if handler is None:
            raise BusError(
                UNKNOWN_ACTION,
                f"unknown action {action!r:.100}; this {self.service.task} agent serves: "
                f"{', '.join(handlers)}",
            )
        if self.stopping and action not in SERVED_WHILE_STOPPING:
            raise BusError(SHUTTING_DOWN, "the agent is shutting down")
        if prepared.error is not None:
            raise prepared.error
        handler(call, prepared)

    def _client_gone(self, routing_id: bytes) -> None:
        """A client's connection closed: no reply can reach it any more, so its jobs are
        dropped before they run. queue_for_batch jobs and streams are not tied to a
        connection (they are fetched by request_id, from any socket) and carry on."""
        jobs = self.inflight.drop(lambda job: job.sink.owner == routing_id)
        self.counters.dropped_for_gone_clients += len(jobs)
        self.work.cancel_at_model_manager(jobs)
        self.stream_driver.client_gone(routing_id)
        for job_id in [j for j, c in self.control.items() if c.call.routing_id == routing_id]:
            del self.control[job_id]
        if self.live is not None:
            self.live.client_gone(routing_id, time.monotonic())
        if jobs:
            log.info("a client went away: %d of its jobs dropped before they ran", len(jobs))

    # --- control actions ------------------------------------------------------------------

    def _view(self) -> ModelManagerView:
        return self.backend.view()

    def _health(self, call: ClientCall, _prepared: Prepared) -> None:
        self._send(call, health_reply(self.service.task, self._view(), self.stopping))

    def _voices(self, call: ClientCall, _prepared: Prepared) -> None:
        view = self._view()
        if not view.models(self.service.task):
            raise BusError(MODEL_UNAVAILABLE, "no model manager has registered yet; retry shortly")
        self._send(call, voices_reply(self.service.task, view))

    def _stats(self, call: ClientCall, _prepared: Prepared) -> None:
        self._ask_managers(ControlCall(call, "stats", time.monotonic() + STATS_TIMEOUT_S),
                           {"type": "stats"})

    def _configure(self, call: ClientCall, prepared: Prepared) -> None:
        message = configure_message(self.service.task, "", prepared.message)
        if not self.backend.alive:
            raise BusError(MODEL_UNAVAILABLE, "no model manager is alive to take the new settings")
        self._ask_managers(ControlCall(call, "configure", time.monotonic() + STATS_TIMEOUT_S), message)

    def _ask_managers(self, pending: ControlCall, message: dict[str, Any]) -> None:
        """Send a control message to every live model manager; the reply goes out once all
        have answered (or at the deadline, with what came)."""
        job_id = uuid.uuid4().hex
        pending.waiting = set(self.backend.broadcast({**message, "job_id": job_id}))
        if not pending.waiting:  # none alive: the agent's own figures, without waiting
            self._reply_control(pending)
            return
        self.control[job_id] = pending

    def _answer_control(self, identity: bytes, answer: dict[str, Any]) -> None:
        job_id = answer.get("job_id", "")
        pending = self.control.get(job_id)
        if pending is None or identity not in pending.waiting:
            return
        pending.waiting.discard(identity)
        pending.answers.append(answer)
        if not pending.waiting:
            del self.control[job_id]
            self._reply_control(pending)

    def _reply_control(self, pending: ControlCall) -> None:
        stats = agent_stats(self.service.task, self.counters, len(self.inflight), len(self.results),
                            len(self.streams))
        stats.update(self.backend.stats())
        if self.live is not None:
            stats["live"] = self.live.stats()
        try:
            reply = control_reply(self.service.task, pending, stats)
        except BusError as exc:
            reply = protocol.error_reply(exc)
        self._send(pending.call, reply)

    # --- streams --------------------------------------------------------------------------

    def _stream(self, call: ClientCall, prepared: Prepared) -> None:
        item = prepared.items[0]
        if item.fields.get("output_path") is not None:
            # One file per request: a stream's chunks go back to the client, never to a file.
            raise BusError(INVALID_FIELD, "stream does not take output_path; use synthesize for a file")
        request_id = request_key(item.fields.get("request_id") or uuid.uuid4().hex)
        fields = {**item.fields, "request_id": request_id}
        stream: Stream[StreamJob] = Stream.open(
            request_id, time.monotonic(), self.limits.stream_idle_s, self.limits.stream_buffer
        )
        # Every message is packed before the stream opens, so a refusal leaves no half stream.
        for piece in prepared.pieces:
            job = self.work.new_job(uuid.uuid4().hex, fields, piece, _NO_SINK, INTERACTIVE)
            stream.add_job(job.job_id, StreamJob(job.message, job.body or b"", fields))
        stream.end_input()
        self.stream_driver.open(stream)
        self._send(call, {"status": "streaming", "request_id": request_id, "num_chunks": stream.num_outputs})

    def _next_chunk(self, call: ClientCall, prepared: Prepared) -> None:
        self.stream_driver.read(call, request_key(required(prepared.message, "request_id")))

    # --- live streams (agents/live/streams.py; this agent is their LiveHost) ------------------

    def _on_live_worker(self) -> None:
        assert self.live is not None
        self.live.on_worker(self.live.worker.drain(), time.monotonic())

    def _live_open(self, call: ClientCall, prepared: Prepared) -> None:
        assert self.live is not None
        check_options(prepared.message)
        # Checked now, not at the first decode: a stream's partials fail silently.
        self.backend.model_for(prepared.message.get("model_pref"))
        request_id = request_key(prepared.message.get("request_id") or uuid.uuid4().hex)
        self.live.open(call, prepared.message, request_id, time.monotonic())

    def _live_audio(self, call: ClientCall, prepared: Prepared) -> None:
        assert self.live is not None
        request_id = request_key(required(prepared.message, "request_id"))
        self.live.audio(call, prepared.message, request_id, time.monotonic())

    def _live_next_event(self, call: ClientCall, prepared: Prepared) -> None:
        assert self.live is not None
        request_id = request_key(required(prepared.message, "request_id"))
        self.live.next_event(call, prepared.message, request_id, time.monotonic())

    def _live_close(self, call: ClientCall, prepared: Prepared) -> None:
        assert self.live is not None
        self.live.close(call, request_key(required(prepared.message, "request_id")), time.monotonic())

    def send(self, call: ClientCall, reply: dict[str, Any]) -> None:
        self._send(call, reply)

    def routing_id(self, call: ClientCall) -> bytes:
        return call.routing_id

    def submit_decode(self, job_id: str, fields: dict[str, Any], request: dict[str, Any], priority: int,
                      timeout_ms: int, target_ms: int, on_answer: Callable[[dict[str, Any]], None]) -> None:
        # A final is retried when turned away for now, like a queued job: its client cannot resend it.
        sink = CallbackReply(on_answer, retries=priority == FINAL_PRIORITY)
        self.work.submit(self.work.job(job_id, fields, request, sink, priority, timeout_ms, target_ms))

    def drop_jobs(self, job_ids: list[str]) -> None:
        gone = set(job_ids)
        self.work.cancel_at_model_manager(self.inflight.drop(lambda job: job.job_id in gone))

    def _tick(self, now: float) -> None:
        if self.live is not None:
            self.live.tick(now)
        expired = self.inflight.expired(now)
        self.work.cancel_at_model_manager([job.job_id for job in expired])
        for job in expired:
            job.sink.deliver(self.work.render(job, BusError(TIMEOUT, "no result within the request timeout")))
        for job in self.inflight.due(now):  # turned away for now earlier: another try
            self.work.submit(job)
        self.backend.tick(now)
        self.stream_driver.expire(now)
        for job_id in [j for j, c in self.control.items() if c.deadline <= now]:
            self._reply_control(self.control.pop(job_id))
        if now >= self.next_purge:
            self.results.purge(time.time())
            self.next_purge = now + PURGE_INTERVAL_S
        self.metrics.update(self.backend, self.live.stats() if self.live is not None else None)


class _NoSink(ReplySink):
    """Placeholder of a stream job not released yet (its real sink is made on release)."""

    def deliver(self, entry: dict[str, Any]) -> None:  # pragma: no cover - never delivered
        raise AssertionError("a stream job was answered before it was released")


_NO_SINK = _NoSink()


def live_settings(config: Config) -> LiveSettings:
    limits = config.limits
    return LiveSettings(max_open_streams=limits.max_open_streams, idle_timeout_s=limits.stream_idle_s,
                        max_audio_seconds=limits.max_audio_seconds, max_chunk_s=limits.stream_max_chunk_s,
                        hangup_grace_s=limits.stream_hangup_grace_s,
                        request_timeout_ms=limits.request_timeout_ms)


def journal_path(config: Config, task: str, port: int) -> Path:
    """One journal file per agent; the port is in the name so that two buses sharing a
    journal_dir never take up each other's jobs."""
    return Path(config.limits.journal_dir).expanduser() / f"{task}-{port}.sqlite3"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a voicebus service agent.")
    parser.add_argument("service", choices=sorted(SERVICES))
    args = parser.parse_args(argv)
    return exit_on_config_error(lambda: _serve(SERVICES[args.service]))


def _serve(service: Service) -> int:
    config = load_config()
    setup_logging(f"{service.task}-agent", config.logging.level)
    ServiceAgent(service, config).serve(stop_on_signals())
    return 0


if __name__ == "__main__":
    sys.exit(main())
