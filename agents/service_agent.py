"""A service agent: the thin socket adapter between clients and the ModelManagerAgent.

Clients connect plain zmq REQ (or DEALER) sockets to the agent's ROUTER socket. ROUTER,
unlike REP, lets the agent keep many clients' requests in flight at once, which is what lets
the model manager batch across clients. Each request is validated here (bad input is
answered at once and never reaches a model), forwarded over a DEALER socket to the model
manager, and answered when the result comes back.

Guarantees (see docs/protocol.md):
- every request gets exactly one reply: a result, or an error with a code;
- nothing waits forever: a request unanswered after its timeout gets a "timeout" error;
- garbage on the socket costs one error reply; the agent keeps serving;
- a `queue_for_batch` job is journaled (agents/results.py) before "queued" goes out, so a
  restarted agent resubmits it, and its result stays fetchable across restarts.

Run: ``python -m agents.service_agent stt`` (or ``tts``).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from agents import security
from agents.connections import MONITOR_EVENTS, ConnectionTracker, drain_monitor, message_fd
from agents.results import ResultStore
from agents.services import SERVICES, Service, valid_unicode
from model_manager import protocol
from model_manager.batcher import BULK, INTERACTIVE
from model_manager.config import Config, load_config
from model_manager.errors import (
    BAD_REQUEST,
    CANCELLED,
    DUPLICATE_REQUEST_ID,
    INTERNAL,
    INVALID_FIELD,
    MESSAGE_TOO_LARGE,
    MISSING_FIELD,
    MODEL_UNAVAILABLE,
    NOT_FOUND,
    RETRYABLE,
    SHUTTING_DOWN,
    TIMEOUT,
    TOO_MANY_ITEMS,
    UNKNOWN_ACTION,
    BusError,
)
from model_manager.protocol import Encoding
from model_manager.runtime import exit_on_config_error, setup_logging, stop_on_signals

log = logging.getLogger(__name__)

POLL_MS = 50
PING_INTERVAL_S = protocol.PING_INTERVAL_S
# The model manager counts as dead after this many ping intervals without a pong.
LIVENESS_INTERVALS = protocol.LIVENESS_INTERVALS
# ZMQ_MAXMSGSIZE sits this far above limits.max_message_bytes: frames in between get a
# message_too_large reply; only beyond it does ZeroMQ drop the connection, so that a huge
# frame never fills memory.
HARD_MESSAGE_CAP_FACTOR = 2
# Expired results are deleted from the journal at most this often.
PURGE_INTERVAL_S = 1.0
# A queued job the model manager turns away for now (errors.RETRYABLE) is sent again after this.
QUEUED_RETRY_S = 1.0
# Beyond the model manager's own deadline, so that its timeout error normally arrives first.
DEADLINE_GRACE_S = 2.0
SHUTDOWN_GRACE_S = 30.0
STATS_TIMEOUT_S = 2.0
PRIORITIES = {"interactive": INTERACTIVE, "bulk": BULK}
#: Actions that start no new work, still answered while the agent drains for shutdown.
SERVED_WHILE_STOPPING = frozenset({"health", "stats", "get_result", "next_chunk", "voices", "cancel"})


@dataclass
class ClientCall:
    """A client waiting for one reply."""

    envelope: list[bytes]
    encoding: Encoding
    request_id: Any = None


@dataclass
class BatchCall:
    """A batch request: the reply goes out when every item has an outcome."""

    call: ClientCall
    items: list[dict[str, Any] | None]  # the reply entry of each item, None while pending
    fields: list[dict[str, Any]]  # the client's fields of each item, for rendering results
    pending: int = 0


@dataclass
class Stream:
    """A `stream` request: chunk results arrive in any order and go out in order, one per
    `next_chunk` call, each as soon as it is ready."""

    request_id: str
    chunks: list[dict[str, Any] | None]
    expires_at: float
    next_index: int = 0
    waiting: ClientCall | None = None
    # The chunks after the first, held back until the first is answered (see `_stream`):
    # (job_id, waiter, infer message, its packed body).
    held: list[tuple[str, Waiter, dict[str, Any], bytes]] = field(default_factory=list)


@dataclass
class Waiter:
    """What to do with the model manager's answer to one job."""

    deadline: float
    single: ClientCall | None = None
    batch: BatchCall | None = None
    batch_index: int = 0
    queued_id: str | None = None  # a queue_for_batch request_id: the result goes to the store
    stream: Stream | None = None
    stream_index: int = 0
    message: dict[str, Any] | None = None  # the "infer" message, for resending
    fields: dict[str, Any] = field(default_factory=dict)
    control: str | None = None  # "stats" or "configure": a model manager request, not inference
    retry_at: float = math.inf  # a queued job turned away for now: when to send it again


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
        self.waiters: dict[str, Waiter] = {}
        self.streams: dict[str, Stream] = {}
        self.counts: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.connections = ConnectionTracker()
        # Jobs dropped before they ran because their client's connection closed.
        self.dropped_for_gone_clients = 0
        self.last_pong: dict[str, Any] = {}
        self.last_pong_at = float("-inf")
        self.stopping = False
        self.next_purge = 0.0

    # --- sockets ------------------------------------------------------------------------

    def serve(self, stop: threading.Event) -> None:
        self.front = self.context.socket(zmq.ROUTER)
        self.front.setsockopt(zmq.MAXMSGSIZE, HARD_MESSAGE_CAP_FACTOR * self.limits.max_message_bytes)
        self.front.setsockopt(zmq.LINGER, 1000)
        authenticator = security.secure_server_socket(self.front, self.context, self.config.security)
        self.front_monitor = self.front.get_monitor_socket(MONITOR_EVENTS)
        self.front.bind(f"tcp://{self.config.endpoints.host}:{self.port}")
        self.back = self.context.socket(zmq.DEALER)
        self.back.setsockopt(zmq.LINGER, 0)
        self.back.connect(f"tcp://127.0.0.1:{self.config.endpoints.model_manager_port}")
        poller = zmq.Poller()
        poller.register(self.front, zmq.POLLIN)
        poller.register(self.back, zmq.POLLIN)
        poller.register(self.front_monitor, zmq.POLLIN)
        log.info("%s agent listening on %s:%d", self.service.task, self.config.endpoints.host, self.port)
        self._recover_journal()
        next_ping = 0.0
        shutdown_by = float("inf")
        try:
            while True:
                now = time.monotonic()
                if stop.is_set() and not self.stopping:
                    self.stopping = True
                    shutdown_by = now + SHUTDOWN_GRACE_S
                    log.info("shutting down: %d requests in flight will finish", len(self.waiters))
                if self.stopping and (not self._client_waiters() or now >= shutdown_by):
                    break
                if now >= next_ping:
                    self._to_model_manager({"type": "ping"})
                    next_ping = now + PING_INTERVAL_S
                for sock, _ in poller.poll(POLL_MS):
                    if sock is self.front:
                        self._receive_client()
                    elif sock is self.back:
                        self._on_model_manager(self.back.recv_multipart())
                    else:
                        drain_monitor(self.front_monitor, self.connections, self._client_gone)
                self._expire(time.monotonic())
            # Journaled queue_for_batch jobs stay pending: the next start resubmits them.
            for job_id in [j for j, w in self.waiters.items() if w.queued_id is None]:
                self._resolve(
                    job_id, BusError(SHUTTING_DOWN, "the agent shut down before this request finished")
                )
        finally:
            self.front.disable_monitor()
            self.front_monitor.close()
            self.front.close()
            self.back.close()
            self.results.close()
            if authenticator is not None:
                authenticator.stop()

    def _client_waiters(self) -> bool:
        waiting_streams = any(s.waiting for s in self.streams.values())
        return waiting_streams or any(w.single or w.batch for w in self.waiters.values())

    def _send(self, call: ClientCall, reply: dict[str, Any]) -> None:
        if reply.get("status") == "error":
            self.errors[reply["error"]["code"]] += 1
        try:
            body = protocol.encode_reply(reply, call.encoding)
        except Exception as exc:  # a reply the encoding cannot carry must still be answered
            log.exception("cannot encode a reply")
            failure = BusError(INTERNAL, f"the reply could not be encoded: {exc!r}")
            body = protocol.encode_reply(protocol.error_reply(failure), call.encoding)
        try:
            self.front.send_multipart([*call.envelope, body])
        except zmq.ZMQError as exc:
            log.warning("cannot reply to a client: %s", exc)

    def _to_model_manager(self, message: dict[str, Any], body: bytes | None = None) -> None:
        """Send `message` (already packed as `body`, when given) without blocking the loop."""
        try:
            body = protocol.pack(message) if body is None else body
            self.back.send_multipart([protocol.INTERNAL_VERSION, body], zmq.NOBLOCK)
        except zmq.Again:
            log.warning("model manager link is full; %s not sent", message.get("type"))

    @property
    def model_manager_alive(self) -> bool:
        return time.monotonic() - self.last_pong_at < PING_INTERVAL_S * LIVENESS_INTERVALS

    # --- client side ----------------------------------------------------------------------

    def _receive_client(self) -> None:
        # Connection events first (see agents/connections.py): then the message's descriptor
        # is known to belong to its sender's connection, or known to be closed.
        drain_monitor(self.front_monitor, self.connections, self._client_gone)
        frames = self.front.recv_multipart(copy=False)
        raw = [frame.bytes for frame in frames]
        if not self.connections.message(message_fd(frames[0]), raw[0]):
            self.dropped_for_gone_clients += 1  # sent just before its client hung up
            return
        self._on_client(raw)

    def _client_gone(self, routing_id: bytes) -> None:
        """A client's connection closed: no reply can reach it any more, so its jobs are
        dropped before they run. queue_for_batch jobs and streams are not tied to a
        connection (they are fetched by request_id, from any socket) and carry on."""
        jobs = [
            job_id
            for job_id, w in self.waiters.items()
            if w.control is None
            and (call := w.single or (w.batch.call if w.batch else None)) is not None
            and call.envelope[0] == routing_id
        ]
        self.dropped_for_gone_clients += len(jobs)
        self._drop_jobs(jobs)
        for stream in self.streams.values():
            if stream.waiting is not None and stream.waiting.envelope[0] == routing_id:
                stream.waiting = None  # its client may come back for the chunk on a new socket
        if jobs:
            log.info("a client went away: %d of its jobs dropped before they ran", len(jobs))

    def _drop_jobs(self, job_ids: list[str]) -> None:
        """Forget these jobs unanswered; the model manager drops the ones not yet running."""
        if not job_ids:
            return
        self._to_model_manager({"type": "cancel", "job_ids": job_ids})
        for job_id in job_ids:
            del self.waiters[job_id]

    def _cancel(self, call: ClientCall, message: dict[str, Any]) -> None:
        """Stop a queue_for_batch request or a stream: what has not run yet never runs; a
        later get_result answers `cancelled`. A finished result is left to get_result."""
        request_id = _request_key(_required(message, "request_id"))
        stream = self.streams.pop(request_id, None)
        cancelled = BusError(CANCELLED, "cancelled by its client")
        if stream is not None:
            jobs = [job_id for job_id, w in self.waiters.items() if w.stream is stream]
            stream.held = []
            if stream.waiting is not None:
                self._send(stream.waiting, protocol.error_reply(cancelled, request_id))
        else:
            jobs = [job_id for job_id, w in self.waiters.items() if w.queued_id == request_id]
            if jobs:
                self.results.complete(request_id, protocol.error_reply(cancelled, request_id), time.time())
            elif self.results.contains(request_id, time.time()):
                self._send(call, {"status": "success", "request_id": request_id, "cancelled": False,
                                  "message": "already finished; get_result returns its result"})
                return
            else:
                raise BusError(NOT_FOUND, f"nothing to cancel for request_id {request_id!r}: "
                                          "unknown, finished and fetched, or expired")
        self._drop_jobs(jobs)
        self._send(call, {"status": "success", "request_id": request_id, "cancelled": True})

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
            message, call.encoding = protocol.decode_request(body[0])
            call.request_id = _echoable(message.get("request_id"))
            self._dispatch(call, message)
        except BusError as exc:
            self._send(call, protocol.error_reply(exc, call.request_id))
        except Exception as exc:  # a bug must cost one request, not the agent
            log.exception("unexpected error handling a request")
            self._send(call, protocol.error_reply(BusError(INTERNAL, repr(exc)), call.request_id))

    def _dispatch(self, call: ClientCall, message: dict[str, Any]) -> None:
        action = message.get("action")
        if action is None:
            raise BusError(MISSING_FIELD, "action is required")
        svc = self.service
        handlers = {
            "health": self._health,
            "stats": self._stats,
            "get_result": self._get_result,
            "cancel": self._cancel,
            "configure": self._configure,
            svc.single_action: self._single,
            "queue_for_batch": self._queue_for_batch,
            svc.batch_action: self._batch,
        }
        if svc.split_for_stream is not None:
            handlers.update(stream=self._stream, next_chunk=self._next_chunk)
        if svc.task == "tts":
            handlers["voices"] = self._voices
        handler = handlers.get(action) if isinstance(action, str) else None
        # Unknown actions share one counter, so that garbage cannot grow the table.
        self.counts[action if handler is not None else "<unknown>"] += 1
        if handler is None:
            raise BusError(
                UNKNOWN_ACTION,
                f"unknown action {action!r:.100}; this {svc.task} agent serves: {', '.join(handlers)}",
            )
        if self.stopping and action not in SERVED_WHILE_STOPPING:
            raise BusError(SHUTTING_DOWN, "the agent is shutting down")
        handler(call, message)

    def _health(self, call: ClientCall, _message: dict[str, Any]) -> None:
        alive = self.model_manager_alive
        pong = self.last_pong if alive else {}
        state = (
            "down"
            if not alive
            else "loading"
            if pong.get("loading")
            else "error"
            if pong.get("error")
            else "up"
        )
        known = [m for m in self.last_pong.get("models", []) if m.get("task") == self.service.task]
        # A dead model manager's models stay listed, so a dashboard sees which ones went away.
        models = [{**m, "ready": alive and bool(m.get("ready"))} for m in known]
        self._send(
            call,
            {
                "status": "success",
                "service": self.service.task,
                "live": True,
                "ready": alive
                and bool(pong.get("ready"))
                and any(m["ready"] for m in models)
                and not self.stopping,
                "model_manager": state,
                "model_manager_error": pong.get("error"),
                "models": models,
            },
        )

    def _voices(self, call: ClientCall, _message: dict[str, Any]) -> None:
        self._check_model_manager()
        models = [m for m in self.last_pong.get("models", []) if m.get("task") == self.service.task]
        self._send(call, {"status": "success", "voices": {m["name"]: m.get("voices", []) for m in models}})

    def _stats(self, call: ClientCall, _message: dict[str, Any]) -> None:
        job_id = uuid.uuid4().hex
        self.waiters[job_id] = Waiter(time.monotonic() + STATS_TIMEOUT_S, single=call, control="stats")
        self._to_model_manager({"type": "stats", "job_id": job_id})

    def _configure(self, call: ClientCall, message: dict[str, Any]) -> None:
        settings = _required(message, "settings")
        if not isinstance(settings, dict):
            raise BusError(INVALID_FIELD, "settings must be a map of batch_processing_config keys")
        self._check_model_manager()
        job_id = uuid.uuid4().hex
        self.waiters[job_id] = Waiter(time.monotonic() + STATS_TIMEOUT_S, single=call, control="configure")
        self._to_model_manager(
            {"type": "configure", "job_id": job_id, "model": message.get("model"), "settings": settings}
        )

    def _agent_stats(self) -> dict[str, Any]:
        return {
            "service": self.service.task,
            "requests_by_action": dict(self.counts),
            "errors_by_code": dict(self.errors),
            "in_flight": len(self.waiters),
            "results_stored": len(self.results),
            "dropped_for_gone_clients": self.dropped_for_gone_clients,
        }

    def _get_result(self, call: ClientCall, message: dict[str, Any]) -> None:
        request_id = _request_key(_required(message, "request_id"))
        found = self.results.fetch(request_id, time.time())
        if found is None:
            raise BusError(
                NOT_FOUND, f"no result for request_id {request_id!r}: unknown, already fetched, or expired"
            )
        self._send(call, found)

    def _single(self, call: ClientCall, message: dict[str, Any]) -> None:
        _check_options(message)
        request = self.service.parse_item(message, self.limits)
        self._check_model_manager()
        job_id = uuid.uuid4().hex
        infer, body = self._infer_message(job_id, message, request, INTERACTIVE)
        self._submit(job_id, Waiter(self._deadline(message), single=call, fields=message), infer, body)

    def _queue_for_batch(self, call: ClientCall, message: dict[str, Any]) -> None:
        _check_options(message)
        request = self.service.parse_item(message, self.limits)
        self._check_model_manager()
        request_id = _request_key(message.get("request_id") or uuid.uuid4().hex)
        job_id = uuid.uuid4().hex
        waiter = Waiter(self._deadline(message), queued_id=request_id, fields=message)
        infer, body = self._infer_message(job_id, message, request, BULK)
        # Journaled before "queued" goes out: from then on a crash of this agent loses nothing.
        journaled = {
            "message": {k: v for k, v in infer.items() if k != "job_id"},
            "fields": {k: message[k] for k in ("request_id", *self.service.render_fields) if k in message},
            "deadline_at": time.time() + (waiter.deadline - time.monotonic()),
        }
        if not self.results.add_pending(request_id, time.time(), journaled):
            raise BusError(DUPLICATE_REQUEST_ID, f"request_id {request_id!r} is already queued or unfetched")
        self._submit(job_id, waiter, infer, body)
        self._send(call, {"status": "queued", "request_id": request_id})

    def _recover_journal(self) -> None:
        """Take up the journaled jobs of a previous run. They go to the model manager with
        the first pong (like every job in flight when a model manager appears), each under
        a new job_id, so that cancelling the dead run's copies cannot touch them."""
        wall, mono = time.time(), time.monotonic()
        recovered = expired = 0
        for request_id, job in self.results.pending():
            if job is None or job.get("deadline_at", 0.0) <= wall:
                expired += 1
                reply = protocol.error_reply(BusError(TIMEOUT, "no result within the request timeout"))
                self.results.complete(request_id, {**reply, "request_id": request_id}, wall)
                continue
            left_s = job["deadline_at"] - wall
            job_id = uuid.uuid4().hex
            message = {**job["message"], "job_id": job_id, "timeout_ms": max(1, int(left_s * 1000))}
            self.waiters[job_id] = Waiter(
                mono + left_s, queued_id=request_id, fields=job.get("fields", {}), message=message
            )
            recovered += 1
        if recovered or expired:
            log.warning("journal: resuming %d queued requests; %d timed out while down", recovered, expired)

    def _stream(self, call: ClientCall, message: dict[str, Any]) -> None:
        _check_options(message)
        request = self.service.parse_item(message, self.limits)
        self._check_model_manager()
        request_id = _request_key(message.get("request_id") or uuid.uuid4().hex)
        if request_id in self.streams:
            raise BusError(DUPLICATE_REQUEST_ID, f"stream {request_id!r} is still open")
        pieces = self.service.split_for_stream(request)  # type: ignore[misc]
        # Every message is built before anything is registered, so a refusal leaves no half stream.
        jobs = []
        for piece in pieces:
            job_id = uuid.uuid4().hex
            jobs.append((job_id, *self._infer_message(job_id, message, piece, INTERACTIVE)))
        stream = Stream(request_id, [None] * len(pieces), time.monotonic() + self.limits.result_ttl_s)
        self.streams[request_id] = stream
        deadline = self._deadline(message)
        fields = {**message, "request_id": request_id}
        # The first chunk goes alone: queued with its siblings it would share their batch and
        # come back only when all of them are done, so time to first chunk would be the whole
        # text's. The rest are queued together (and batch together) once it is answered.
        stream.held = [
            (job_id, Waiter(deadline, stream=stream, stream_index=index, fields=fields), infer, body)
            for index, (job_id, infer, body) in enumerate(jobs)
        ]
        self._submit(*stream.held.pop(0))
        self._send(call, {"status": "streaming", "request_id": request_id, "num_chunks": len(pieces)})

    def _release_held_chunks(self, stream: Stream) -> None:
        held, stream.held = stream.held, []
        for job_id, waiter, infer, body in held:
            if self.stopping:
                failure = BusError(SHUTTING_DOWN, "the agent shut down before this chunk was made")
                stream.chunks[waiter.stream_index] = protocol.error_reply(failure, stream.request_id)
            else:
                self._submit(job_id, waiter, infer, body)

    def _next_chunk(self, call: ClientCall, message: dict[str, Any]) -> None:
        request_id = _request_key(_required(message, "request_id"))
        stream = self.streams.get(request_id)
        if stream is None:
            raise BusError(NOT_FOUND, f"no open stream {request_id!r}: unknown, finished, or expired")
        if stream.waiting is not None:
            raise BusError(INVALID_FIELD, f"a next_chunk call for stream {request_id!r} is already waiting")
        stream.waiting = call
        stream.expires_at = time.monotonic() + self.limits.result_ttl_s
        self._deliver_stream(stream)

    def _deliver_stream(self, stream: Stream) -> None:
        ready = stream.chunks[stream.next_index]
        if stream.waiting is None or ready is None:
            return
        index = stream.next_index
        final = index == len(stream.chunks) - 1
        self._send(stream.waiting, {**ready, "index": index, "final": final})
        stream.chunks[index] = None  # sent: let the audio go
        stream.waiting = None
        stream.next_index += 1
        if final:
            del self.streams[stream.request_id]

    def _batch(self, call: ClientCall, message: dict[str, Any]) -> None:
        items = _required(message, "batch_data")
        if not isinstance(items, list) or not items:
            raise BusError(INVALID_FIELD, "batch_data must be a non-empty list of items")
        if len(items) > self.limits.max_batch_items:
            raise BusError(
                TOO_MANY_ITEMS,
                f"batch_data has {len(items)} items; the limit is {self.limits.max_batch_items}",
            )
        self._check_model_manager()
        batch = BatchCall(call, [None] * len(items), [])
        shared = {k: message[k] for k in ("model_pref", "timeout_ms", "priority") if k in message}
        deadline = self._deadline(message)
        for index, item in enumerate(items):
            fields = {**shared, **item} if isinstance(item, dict) else {}
            batch.fields.append(fields)
            rid = _echoable(fields.get("request_id", index), default=index)
            try:
                if not isinstance(item, dict):
                    raise BusError(INVALID_FIELD, f"batch_data[{index}] must be a map/object")
                _check_options(fields)
                request = self.service.parse_item(fields, self.limits)
                job_id = uuid.uuid4().hex
                infer, body = self._infer_message(job_id, fields, request, INTERACTIVE)
            except BusError as exc:
                batch.items[index] = protocol.error_reply(exc, rid)
                continue
            batch.pending += 1
            self._submit(job_id, Waiter(deadline, batch=batch, batch_index=index, fields=fields), infer, body)
        if batch.pending == 0:
            self._finish_batch(batch)

    def _infer_message(
        self, job_id: str, fields: dict[str, Any], request: dict[str, Any], default_priority: int
    ) -> tuple[dict[str, Any], bytes]:
        """The "infer" message for one item, and its packed body; BusError if it cannot be
        packed (e.g. a string with lone surrogates, which UTF-8 cannot carry)."""
        message = {
            "type": "infer",
            "job_id": job_id,
            "task": self.service.task,
            "model_pref": fields.get("model_pref"),
            "request": request,
            "priority": PRIORITIES.get(fields.get("priority"), default_priority),
            "timeout_ms": self._timeout_ms(fields),
        }
        try:
            return message, protocol.pack(message)
        except (TypeError, ValueError, OverflowError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            raise BusError(
                INVALID_FIELD, f"the request holds a value that cannot be forwarded ({reason:.200})"
            ) from None

    def _submit(self, job_id: str, waiter: Waiter, message: dict[str, Any], body: bytes) -> None:
        # The message is kept until answered: if the model manager restarts, it is sent again.
        waiter.message = message
        self.waiters[job_id] = waiter
        self._to_model_manager(message, body)

    def _check_model_manager(self) -> None:
        if not self.model_manager_alive:
            raise BusError(MODEL_UNAVAILABLE, "the model manager is not reachable; retry shortly")

    def _timeout_ms(self, fields: dict[str, Any]) -> int:
        """The request's timeout: its own `timeout_ms` can shorten the server's, never lengthen it."""
        return min(_timeout_ms(fields) or self.limits.request_timeout_ms, self.limits.request_timeout_ms)

    def _deadline(self, fields: dict[str, Any]) -> float:
        return time.monotonic() + self._timeout_ms(fields) / 1000.0 + DEADLINE_GRACE_S

    # --- model manager side ---------------------------------------------------------------

    def _on_model_manager(self, frames: list[bytes]) -> None:
        if len(frames) != 2 or frames[0] != protocol.INTERNAL_VERSION:
            log.warning("dropping malformed message from the model manager")
            return
        message = protocol.unpack(frames[1])
        kind = message.get("type")
        if kind == "pong":
            previous, was_alive = self.last_pong.get("instance"), self.model_manager_alive
            self.last_pong, self.last_pong_at = message, time.monotonic()
            # A new instance never saw our jobs; after a silence, the model manager may have
            # taken this agent for dead and dropped its queued jobs. Either way: send again
            # (the model manager ignores a job_id it already holds for this agent).
            if message.get("instance") != previous or not was_alive:
                self._resend_after_restart()
        elif kind == "stats":
            waiter = self.waiters.pop(message.get("job_id", ""), None)
            if waiter and waiter.single:
                models = [m for m in message.get("models", []) if m.get("task") == self.service.task]
                self._send(
                    waiter.single,
                    {
                        "status": "success",
                        **self._agent_stats(),
                        "models": models,
                        "memory": message.get("memory"),
                        "workers": message.get("workers"),
                    },
                )
        elif kind == "configured":
            waiter = self.waiters.pop(message.get("job_id", ""), None)
            if waiter and waiter.single:
                if message.get("ok"):
                    self._send(waiter.single, {"status": "success", "models": message.get("models", [])})
                else:
                    error = message.get("error") or {}
                    bus_error = BusError(error.get("code", INTERNAL), error.get("message", ""))
                    self._send(waiter.single, protocol.error_reply(bus_error))
        elif kind == "result":
            if message.get("ok"):
                self._resolve(message["job_id"], message["result"])
            else:
                error = message.get("error") or {}
                failure = BusError(
                    error.get("code", INTERNAL), error.get("message", ""), error.get("retry_after_ms")
                )
                self._resolve(message["job_id"], failure)

    def _resend_after_restart(self) -> None:
        """A new model manager instance never saw the jobs in flight: send them again.
        Inference is idempotent, and a late answer from the old instance is ignored."""
        pending = [w.message for w in self.waiters.values() if w.message is not None]
        if not pending:
            return
        log.warning("model manager (re)connected; resending %d requests in flight", len(pending))
        for message in pending:
            self._to_model_manager(message)

    def _resolve(self, job_id: str, outcome: dict[str, Any] | BusError) -> None:
        waiter = self.waiters.pop(job_id, None)
        if waiter is None:
            return  # already timed out and answered
        if (
            waiter.queued_id is not None
            and isinstance(outcome, BusError)
            and outcome.code in RETRYABLE
            and waiter.deadline > time.monotonic() + QUEUED_RETRY_S
        ):
            # Overloaded, restarting, going away: not a failure of the job. Its client holds
            # only a request_id and cannot send it again, so the agent does, until its timeout.
            hint_s = (outcome.retry_after_ms or 0) / 1000.0
            waiter.retry_at = time.monotonic() + max(QUEUED_RETRY_S, hint_s)
            self.waiters[job_id] = waiter
            return
        if waiter.control == "stats":
            # The model manager did not answer in time: report what the agent knows.
            reply = {"status": "success", **self._agent_stats(), "models": [], "model_manager": "unavailable"}
            self._send(waiter.single, reply)  # type: ignore[arg-type]
            return
        if waiter.control == "configure":
            unavailable = BusError(MODEL_UNAVAILABLE, "the model manager did not confirm the new settings")
            self._send(waiter.single, protocol.error_reply(unavailable))  # type: ignore[arg-type]
            return
        rid = waiter.fields.get("request_id")
        if isinstance(outcome, BusError):
            entry = protocol.error_reply(outcome, rid)
        else:
            try:
                entry = {
                    "status": "success",
                    "request_id": rid,
                    **self.service.render_result(outcome, waiter.fields, self.limits),
                }
                if "timing" in outcome:
                    entry["timing"] = outcome["timing"]
            except BusError as exc:  # e.g. the output_path file cannot be written
                entry = protocol.error_reply(exc, rid)
        if waiter.single:
            self._send(waiter.single, entry)
        elif waiter.batch:
            batch = waiter.batch
            if entry.get("request_id") is None:
                entry["request_id"] = batch.fields[waiter.batch_index].get("request_id", waiter.batch_index)
            batch.items[waiter.batch_index] = entry
            batch.pending -= 1
            if batch.pending == 0:
                self._finish_batch(batch)
        elif waiter.stream is not None:
            waiter.stream.chunks[waiter.stream_index] = entry
            self._release_held_chunks(waiter.stream)
            self._deliver_stream(waiter.stream)
        elif waiter.queued_id is not None:
            entry["request_id"] = waiter.queued_id
            self.results.complete(waiter.queued_id, entry, time.time())

    def _finish_batch(self, batch: BatchCall) -> None:
        self._send(batch.call, {"status": "success", "results": batch.items})

    def _expire(self, now: float) -> None:
        expired = [job_id for job_id, w in self.waiters.items() if w.deadline <= now]
        if expired:
            self._to_model_manager({"type": "cancel", "job_ids": expired})
        for job_id in expired:
            self._resolve(job_id, BusError(TIMEOUT, "no result within the request timeout"))
        for waiter in self.waiters.values():
            if waiter.retry_at <= now and waiter.message is not None:
                waiter.retry_at = math.inf
                self._to_model_manager(waiter.message)
        if now >= self.next_purge:
            self.results.purge(time.time())
            self.next_purge = now + PURGE_INTERVAL_S
        for request_id in [r for r, s in self.streams.items() if s.expires_at <= now and not s.waiting]:
            del self.streams[request_id]


def _required(message: dict[str, Any], key: str) -> Any:
    if message.get(key) is None:
        raise BusError(MISSING_FIELD, f"{key} is required")
    return message[key]


def journal_path(config: Config, task: str, port: int) -> Path:
    """One journal file per agent; the port is in the name so that two buses sharing a
    journal_dir never take up each other's jobs."""
    return Path(config.limits.journal_dir).expanduser() / f"{task}-{port}.sqlite3"


# Scalars every encoding carries back unchanged; anything else is not echoed.
_ECHOABLE = (str, int, float, bytes)


def _echoable(value: Any, default: Any = None) -> Any:
    """`value` if it can be echoed as a request_id, else `default`."""
    return value if isinstance(value, _ECHOABLE) else default


def _request_key(value: Any) -> str:
    """A request_id as the key of a queued result or a stream; BusError for one that cannot
    be a key (not a scalar, or a string with lone surrogates, which UTF-8 cannot store)."""
    key = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    if not isinstance(value, _ECHOABLE) or not valid_unicode(key):
        raise BusError(INVALID_FIELD, "request_id must be a string or a number")
    return key


def _check_options(fields: dict[str, Any]) -> None:
    """Validate the per-request options every action shares (raises BusError)."""
    request_id = fields.get("request_id")
    if request_id is not None and not isinstance(request_id, _ECHOABLE):
        raise BusError(INVALID_FIELD, "request_id must be a string or a number")
    priority = fields.get("priority")
    if priority is not None and (not isinstance(priority, str) or priority not in PRIORITIES):
        raise BusError(INVALID_FIELD, f"priority must be one of {sorted(PRIORITIES)}, got {priority!r}")
    _timeout_ms(fields)
    model_pref = fields.get("model_pref")
    if model_pref is not None and not valid_unicode(model_pref):
        raise BusError(INVALID_FIELD, f"model_pref must be a string, got {model_pref!r}")


def _timeout_ms(fields: dict[str, Any]) -> int | None:
    value = fields.get("timeout_ms")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise BusError(INVALID_FIELD, f"timeout_ms must be a positive number, got {value!r:.100}")
    return int(value)


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
