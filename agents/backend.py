"""The agent's backend: the ROUTER socket model managers connect out to, and the dispatch
of every job over it (docs/protocol.md §6).

This module moves messages; the decisions are in agents/managers.py (who is alive, credit)
and agents/dispatch.py (which job goes where, and when). Guarantees:
- every job the agent hands over is answered through `answer` exactly once: by the manager
  holding it, or `model_unavailable` when no manager holding its model comes in time (the
  agent's in-flight table times out the rest);
- a manager that dies, hangs or is cut off (silent for 3 heartbeats), or says DISCONNECT,
  has its jobs sent to another live one; a late answer from it is dropped by job id;
- a manager that answers `shutting_down` or `model_unavailable` did not run the job: it
  goes back in line for another manager.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from agents import security
from agents.control import ModelManagerView
from agents.dispatch import Dispatcher, resolve_model
from agents.inflight import DEADLINE_GRACE_S, InFlight, InFlightJob
from agents.managers import ManagerRegistry, Refused
from model_manager import link_protocol as link
from model_manager.config import Config
from model_manager.errors import INTERNAL, MODEL_UNAVAILABLE, SHUTTING_DOWN, BusError

log = logging.getLogger(__name__)

#: Results with these codes mean the manager did not run the job: it goes to another one.
NOT_RUN_THERE = frozenset({SHUTTING_DOWN, MODEL_UNAVAILABLE})

Answer = Callable[[InFlightJob, "dict[str, Any] | BusError"], None]
ControlAnswer = Callable[[bytes, dict[str, Any]], None]


@dataclass
class BackendCounters:
    #: Jobs sent again because their manager died, hung, was cut off or left.
    resent: int = 0
    #: Answers dropped because another manager held the job by then (or it was answered).
    duplicates_dropped: int = 0


class Backend:
    def __init__(self, config: Config, task: str, inflight: InFlight,
                 answer: Answer, control_answer: ControlAnswer) -> None:
        self.task = task
        self.inflight = inflight
        self._answer = answer
        self._control_answer = control_answer
        configured = tuple(spec.name for spec in config.models(task))
        self.configured = configured
        self.registry = ManagerRegistry(task, configured)
        limits, policy = config.limits, config.batch_processing_config
        self.dispatcher = Dispatcher(self.registry, policy.max_queue_size, limits.model_wait_ms / 1000.0)
        self.counters = BackendCounters()
        # A context of its own: its CURVE handler (ZAP) must not clash with the client side's.
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        # A manager reconnecting (a link that flapped) keeps its identity and its jobs.
        self.socket.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.authenticator = security.secure_backend_socket(self.socket, self.context, config.security)
        endpoints = config.endpoints
        port = endpoints.stt_backend_port if task == "stt" else endpoints.tts_backend_port
        self.socket.bind(f"tcp://{endpoints.backend_host}:{port}")
        self.address = f"{endpoints.backend_host}:{port}"
        self._next_beat = 0.0

    def close(self) -> None:
        self.socket.close()
        if self.authenticator is not None:
            self.authenticator.stop()
        self.context.term()

    # --- what the agent asks ----------------------------------------------------------------

    def submit(self, job: InFlightJob) -> None:
        """Hand `job` (already in the in-flight table) to a manager now or when one can take
        it. BusError (unknown_model, overloaded) when it cannot even wait."""
        model = self.model_for(job.message.get("model_pref"))
        job.message["model_pref"] = model
        job.body = None
        # Given up at the request's own timeout, before the in-flight table's grace runs out:
        # a job that never reached a manager is model_unavailable, not a timeout.
        timeout_at = job.deadline - DEADLINE_GRACE_S
        self.dispatcher.enqueue(job.job_id, model, int(job.message.get("priority", 0)), timeout_at)
        self.pump(time.monotonic())

    def cancel(self, job_ids: list[str]) -> None:
        for identity, ids in self.dispatcher.cancel(job_ids).items():
            self._send(identity, {"type": "cancel", "job_ids": ids})

    def forget(self, job_id: str) -> None:
        """A job answered by the agent itself (its timeout): no credit stays taken for it."""
        self.dispatcher.forget(job_id)

    def waiting(self) -> list[str]:
        """The jobs no model manager holds yet."""
        return [job_id for job_id in self.dispatcher.entries if self.registry.holder(job_id) is None]

    def broadcast(self, message: dict[str, Any]) -> list[bytes]:
        """Send a control message (stats, configure) to every live manager; who got it."""
        return [identity for identity in list(self.registry.managers) if self._send(identity, message)]

    @property
    def alive(self) -> bool:
        return bool(self.registry.managers)

    def model_for(self, model_pref: object) -> str:
        """The model a job with `model_pref` runs on; BusError(unknown_model) for a name the
        configuration does not list."""
        return resolve_model(model_pref, self.task, self.configured, self.registry)

    def view(self) -> ModelManagerView:
        """The managers as `health` and `voices` show them: every model of this task ever
        offered, `ready` while a live manager holds it."""
        live = self.registry.live_models()
        models = [{**offer.details, "name": name, "task": self.task, "ready": name in live}
                  for name, offer in self.registry.seen.items()]
        return ModelManagerView(bool(live), {"ready": bool(live), "loading": False, "error": None,
                                             "models": models})

    def stats(self) -> dict[str, Any]:
        """The agent's view of dispatch, for `stats` and the monitor page."""
        now = time.monotonic()
        return {
            "model_managers": [r.describe(now) for r in self.registry.managers.values()],
            "dispatch": {
                "demand": {m: self.dispatcher.demand(m) for m in self.configured},
                "waiting": {m: self.dispatcher.waiting(m) for m in self.configured},
                "jobs_resent": self.counters.resent,
                "duplicate_results_dropped": self.counters.duplicates_dropped,
            },
        }

    # --- the socket -----------------------------------------------------------------------

    def receive(self) -> None:
        """Handle every message waiting on the socket."""
        now = time.monotonic()
        while True:
            try:
                identity, *frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                message = link.decode(frames)
            except ValueError as exc:
                log.warning("dropping a backend message from %s: %s", identity.hex()[:12], exc)
                continue
            self._on_message(identity, message, now)
        self.pump(now)

    def _on_message(self, identity: bytes, message: Any, now: float) -> None:
        if isinstance(message, link.Ready):
            self._on_ready(identity, message, now)
        elif isinstance(message, link.Disconnect):
            jobs = self.registry.remove(identity)
            log.info("model manager %s left (%s); %d of its jobs go elsewhere", identity.hex()[:12],
                     message.reason or "disconnect", len(jobs))
            self._resend(jobs)
        elif isinstance(message, link.Heartbeat):
            if not self.registry.heartbeat(identity, message, now):
                self._send(identity, link.Disconnect("unknown to this agent; say ready again", True))
        elif not self.registry.heard(identity, now):
            # Not registered (taken for dead, or this agent restarted): a result it sends
            # now was already sent elsewhere, and it must register again before new work.
            if message.get("type") == "result":
                self.counters.duplicates_dropped += 1
            self._send(identity, link.Disconnect("unknown to this agent; say ready again", True))
        elif message.get("type") == "result":
            self._on_result(identity, message)
        elif message.get("type") in ("stats", "configured"):
            self._control_answer(identity, message)
        else:
            log.warning("unknown backend message type %r", message.get("type"))

    def _on_ready(self, identity: bytes, ready: link.Ready, now: float) -> None:
        try:
            orphans = self.registry.register(identity, ready, now)
        except Refused as exc:
            log.warning("refused model manager %s on %s: %s", ready.instance[:12], ready.host, exc)
            self._send(identity, link.Disconnect(f"refused: {exc}", False))
            return
        models = ", ".join(o.name for o in ready.models if o.task == self.task) or "none for this agent"
        log.info("model manager %s on %s registered: %s", ready.instance[:12], ready.host, models)
        self._send(identity, link.Heartbeat())  # the acknowledgement: it counts from now
        self._resend(orphans)

    def _on_result(self, identity: bytes, message: dict[str, Any]) -> None:
        job_id = message.get("job_id")
        error = message.get("error") or {}
        if not message.get("ok") and error.get("code") in NOT_RUN_THERE and isinstance(job_id, str):
            # Not run there (draining, or it lost the model): back in line for another one.
            if not self.dispatcher.bounce(job_id, identity):
                self.counters.duplicates_dropped += 1
            return
        if not isinstance(job_id, str) or not self.dispatcher.settle(job_id, identity):
            self.counters.duplicates_dropped += 1
            return
        job = self.inflight.pop(job_id)
        if job is None:
            return  # answered meanwhile (its timeout)
        if message.get("ok"):
            self._answer(job, message["result"])
        else:
            self._answer(job, BusError(error.get("code", INTERNAL), error.get("message", ""),
                                       error.get("retry_after_ms")))

    def _resend(self, job_ids: list[str]) -> None:
        back = self.dispatcher.requeue(job_ids)
        self.counters.resent += len(back)
        if back:
            log.warning("resending %d jobs a model manager held", len(back))

    def tick(self, now: float) -> None:
        """Heartbeats, the liveness of managers, and jobs that waited too long."""
        if now >= self._next_beat:
            for identity in list(self.registry.managers):
                self._send(identity, link.Heartbeat())
            self._next_beat = now + link.HEARTBEAT_INTERVAL_S
        # Not while messages wait: after a stall of this loop the heartbeats still queued
        # would show that the managers are alive.
        if not self.socket.get(zmq.EVENTS) & zmq.POLLIN:
            for record, jobs in self.registry.expire(now):
                log.warning("model manager %s on %s is silent; %d of its jobs go elsewhere",
                            record.instance[:12], record.ready.host, len(jobs))
                self._resend(jobs)
        for job_id in self.dispatcher.expired(now):
            job = self.inflight.pop(job_id)
            if job is not None:
                model = job.message.get("model_pref")
                self._answer(job, BusError(MODEL_UNAVAILABLE, f"no model manager holding {model} is alive"))
        self.pump(now)

    def pump(self, now: float) -> None:
        for job_id, manager in self.dispatcher.assignments(now):
            job = self.inflight.get(job_id)
            if job is None:
                self.dispatcher.forget(job_id)
                continue
            if not self._send(manager.identity, job.message, job.body):
                self.dispatcher.requeue([job_id])
            job.body = None

    def _send(self, identity: bytes, message: link.ControlMessage | dict[str, Any], body: bytes | None = None
              ) -> bool:
        try:
            frames = link.encode(message) if body is None else [link.LINK_VERSION, body]
            self.socket.send_multipart([identity, *frames], zmq.NOBLOCK)
            return True
        except (zmq.Again, zmq.ZMQError) as exc:  # gone (EHOSTUNREACH) or full: liveness decides
            log.debug("cannot send to model manager %s: %s", identity.hex()[:12], exc)
            return False
