"""ModelManagerAgent: loads its models once and serves batched inference to the agents.

It connects out to every agent it serves (model_manager/agent_links.py; docs/protocol.md
§6), says READY once its models are loaded, and heartbeats. Message types from an agent:
- "infer"  {job_id, task, model_pref, request, priority, timeout_ms, target_ms} -> one "result"
- "cancel" {job_ids}: the client has gone; queued jobs are dropped unanswered
- "stats"  {job_id} -> "stats" {job_id, instance, host, models: [...], memory, workers}
- "configure" {job_id, task, model?, settings} -> "configured" {job_id, ok, models | error}
An agent silent for three heartbeats, or that says it does not know this manager, is taken
for dead: its queued jobs are dropped, so that they do not run for nobody (the agent sends
them again, here or elsewhere).

On SIGTERM it drains: it tells the agents (no new work comes), answers new jobs with
shutting_down (the agent sends them elsewhere), finishes what it holds within
`model_manager.drain_timeout_s`, says DISCONNECT and exits.

An "infer" is prepared by its engine (checks; Whisper's speech detection, which sets its
window length and so its batch key) on `PreparePool` threads, not on the socket thread, so
that pings, cancels and other agents' jobs never wait behind it (see preparing.py).

A message that fails in an unexpected way is logged with its traceback and, when it names a
job_id, answered with `internal_error` and the cause: nothing an agent sends can stop this
process or leave the agent waiting for its timeout.

Every "infer" gets exactly one "result" {job_id, ok, result | error}, including on
shutdown (queued jobs get shutting_down) and on failure (never placeholder output). An
"infer" whose job_id the same agent already has queued or running is ignored: agents resend
their jobs after a silence, and the first copy's result answers both.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import zmq

from model_manager import link_protocol as link
from model_manager.agent_links import AgentLinks
from model_manager.config import Config
from model_manager.engines.base import Engine
from model_manager.errors import (
    BAD_REQUEST,
    MODEL_UNAVAILABLE,
    OVERLOADED,
    SHUTTING_DOWN,
    TIMEOUT,
    BusError,
    internal_error,
)
from model_manager.jobs import Job, Outcome
from model_manager.metrics import BusMetrics, Exporter
from model_manager.models import ModelSet
from model_manager.preparing import Arrival, PreparePool

log = logging.getLogger(__name__)

#: Where worker threads hand results to the socket thread; one per instance, so that two
#: model managers in one process (tests, say) never share it.
RESULTS_ENDPOINT = "inproc://model-manager-results-{instance}"
POLL_MS = 100
#: /livez fails once the socket loop has not come round for this long: a hung manager.
LOOP_STALL_S = 30.0
# The reply type of each internal request type, for answering one that failed unexpectedly.
REPLY_TYPES = {"infer": "result", "stats": "stats", "configure": "configured"}


@dataclass
class HeldJob:
    """An "infer" that arrived while the models load: it keeps its arrival time, so that its
    deadline counts from then, not from when the models are ready."""

    identity: bytes
    message: dict[str, Any]
    received_at: float  # monotonic


class ModelManagerAgent:
    def __init__(
        self, config: Config, engines: Sequence[Engine] | None = None, context: zmq.Context | None = None
    ) -> None:
        self.config = config
        self.context = context or zmq.Context.instance()
        self.models = ModelSet(config, self._deliver, engines)
        self._local = threading.local()
        self._preloaded = engines is not None
        self._held: list[HeldJob] = []
        # Tells agents that a restarted model manager is a new instance with no jobs in flight.
        self.instance = uuid.uuid4().hex
        # Every agent's jobs not answered yet, to drop a dead agent's jobs and to ignore
        # resent ones.
        self._peer_jobs: dict[bytes, set[str]] = {}
        self.draining = False
        self.last_turn = time.monotonic()
        self.metrics = BusMetrics(read_stats=self.stats, read_records=self.models.worker_records)
        # Engines' `prepare` (Whisper's speech detection) runs here, off the socket thread.
        self._preparing = PreparePool(self._hand_off)

    def load_models(self) -> None:
        self.models.load()

    @property
    def load_error(self) -> str | None:
        return self.models.load_error

    @property
    def held_limit(self) -> int:
        """Jobs held while models load: as many as every model's queue could take."""
        models = len(self.config.stt_models) + len(self.config.tts_models)
        return self.config.batch_processing_config.max_queue_size * max(1, models)

    # --- the socket loop ----------------------------------------------------------------

    def agent_addresses(self) -> list[str]:
        """The agents to serve: `model_manager.agents`, or this host's agents."""
        if self.config.model_manager.agents:
            return list(self.config.model_manager.agents)
        endpoints = self.config.endpoints
        host = "127.0.0.1" if endpoints.backend_host in ("0.0.0.0", "*") else endpoints.backend_host
        ports = [endpoints.stt_backend_port if task == "stt" else endpoints.tts_backend_port
                 for task in ("stt", "tts") if self.config.models(task)]
        return [f"tcp://{host}:{port}" for port in ports]

    def serve(self, stop: threading.Event) -> None:
        self.links = AgentLinks(self.context, self.agent_addresses(), self.instance, self.config.security)
        results = self.context.socket(zmq.PULL)
        results.bind(RESULTS_ENDPOINT.format(instance=self.instance))
        exporter = self._start_exporter()
        if self._preloaded:
            self.models.start_workers()
            self.models.loaded.set()
        else:
            threading.Thread(target=self.load_models, name="model-loader", daemon=True).start()
        poller = zmq.Poller()
        for sock in (*self.links.sockets(), results):
            poller.register(sock, zmq.POLLIN)
        log.info("model manager %s serving the agents at %s", self.instance[:12],
                 ", ".join(self.agent_addresses()))
        stopping = False
        announced = False
        drain_by = float("inf")
        try:
            while True:
                now = self.last_turn = time.monotonic()
                if stop.is_set() and not stopping:
                    stopping = self.draining = True
                    drain_by = now + self.config.model_manager.drain_timeout_s
                    log.info("draining: no new work; what is held finishes within %.0f s",
                             self.config.model_manager.drain_timeout_s)
                    self.links.beat_now(self.heartbeat())  # tell the agents at once
                if stopping and (self._drained() or now >= drain_by):
                    break
                if self.load_error is not None:
                    # Nothing to serve: exit, saying why, rather than hold a slot no work reaches.
                    log.error("cannot serve: %s", self.load_error)
                    break
                for sock, _ in poller.poll(POLL_MS):
                    if sock is results:
                        self._forward_results(results)
                    else:
                        for key, message in self.links.receive(sock):
                            self._handle(key, message, stopping)
                if self._held and (self.models.loaded.is_set() or stopping):
                    self._release_held(stopping)
                if not announced and self.models.ready:
                    self.links.announce(self.ready_message())
                    announced = True
                for key in self.links.tick(time.monotonic(), self.heartbeat()):
                    self._drop_agent_jobs(key, "is silent")
            for worker in self.models.worker_list():
                worker.stop()  # anything still queued past the drain gets shutting_down
            self._release_held(stopping=True)
            self._preparing.close()
            self._forward_results(results)
            self.links.say_goodbye("drained" if self._drained() else "stopped at the drain timeout")
        finally:
            if exporter is not None:
                exporter.close()
            results.close(linger=0)
            self.links.close()

    def _drained(self) -> bool:
        workers = self.models.worker_list()
        return not self._preparing.busy and not any(w.queue_depth() or w.busy for w in workers)

    def ready_message(self) -> link.Ready:
        offers = tuple(link.ModelOffer(e.name, e.task, self.credit, e.describe())
                       for e in self.models.engines)
        return link.Ready(link.LINK_PROTOCOL, self.instance, socket.gethostname(), offers,
                          self.models.free_memory_bytes())

    def heartbeat(self) -> link.Heartbeat:
        return link.Heartbeat(draining=self.draining, free_memory_bytes=self.models.free_memory_bytes())

    @property
    def credit(self) -> int:
        """Jobs per model this manager takes at once: enough to fill the next batch while one
        runs, and never more than its queue holds."""
        policy = self.config.batch_processing_config
        wanted = self.config.model_manager.credit or 2 * policy.max_batch_size
        return max(1, min(wanted, policy.max_queue_size))

    def _start_exporter(self) -> Exporter | None:
        """The HTTP server (metrics and probes), or None when metrics_port is 0 or taken:
        it is for watching the bus, so a port clash must not stop it from serving."""
        port = self.config.endpoints.metrics_port
        if not port:
            return None
        # Beside the agents, on endpoints.host; "*" is ZeroMQ's spelling of every interface.
        host = "0.0.0.0" if self.config.endpoints.host == "*" else self.config.endpoints.host
        try:
            return self.metrics.serve(host, port, ready=self.serving, alive=self.turning)
        except OSError as exc:
            log.error("metrics exporter disabled: cannot listen on %s:%d: %s", host, port, exc)
            return None

    def turning(self) -> bool:
        """The liveness probe: the socket loop came round lately (a hung loop fails it)."""
        return time.monotonic() - self.last_turn < LOOP_STALL_S

    def serving(self) -> bool:
        """The readiness probe: models loaded, an agent took the READY, and not draining."""
        links = getattr(self, "links", None)
        return self.models.ready and not self.draining and links is not None and links.accepted

    def _forward_results(self, results: zmq.Socket) -> None:
        while True:
            try:
                identity, job_id, body = results.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._peer_jobs.get(identity, set()).discard(job_id.decode())
            self.links.send(identity, {}, body)

    def _drop_agent_jobs(self, peer: bytes, why: str) -> None:
        """Drop the queued and held jobs of an agent that is silent or forgot us: they would
        run for nobody. A running batch still finishes (its results go nowhere). The agent
        sends its jobs again, to us or another manager, so nothing is lost either way."""
        jobs = self._peer_jobs.pop(peer, set())
        dropped = self._preparing.cancel(peer, jobs) if jobs else 0  # before the queues: see PreparePool
        dropped += sum(w.cancel(jobs) for w in self.models.worker_list()) if jobs else 0
        held = len(self._held)
        self._held = [h for h in self._held if h.identity != peer]
        dropped += held - len(self._held)
        if dropped:
            log.warning("agent %s %s; dropped %d of its queued jobs", peer.decode(errors="replace"), why,
                        dropped)

    def _reply(self, identity: bytes, message: dict[str, Any]) -> None:
        self.links.send(identity, message)

    def _deliver(self, job: Job, outcome: Outcome) -> None:
        """Called on worker threads: hand the answer to the socket thread (sockets are not thread-safe)."""
        self._push_result(job.reply_to, job.job_id, result_message(job.job_id, outcome, model=job.model))

    def _push_result(self, identity: bytes, job_id: str, message: dict[str, Any]) -> None:
        push = getattr(self._local, "push", None)
        if push is None:
            push = self._local.push = self.context.socket(zmq.PUSH)
            push.connect(RESULTS_ENDPOINT.format(instance=self.instance))
        push.send_multipart([identity, str(job_id).encode(), link.encode(message)[1]])

    def _handle(self, identity: bytes, message: Any, stopping: bool) -> None:
        """Handle one message from an agent. A bug must cost one message, not this process:
        an unexpected exception is logged with its traceback and, when the message names a
        job_id, answered with internal_error and the cause."""
        if isinstance(message, link.Disconnect):
            self._drop_agent_jobs(identity, "does not know this manager any more")
            return
        if not isinstance(message, dict):
            return
        kind = message.get("type")
        try:
            self._dispatch(identity, kind, message, stopping)
        except Exception as exc:
            log.exception("internal message %r failed", kind)
            reply_type, job_id = REPLY_TYPES.get(kind), message.get("job_id")
            if reply_type is not None and isinstance(job_id, str):
                failure = internal_error(exc)
                self._reply(identity, {"type": reply_type, "job_id": job_id, "ok": False,
                                       "error": failure.to_wire()})

    def _dispatch(self, identity: bytes, kind: Any, message: dict[str, Any], stopping: bool) -> None:
        if kind == "stats":
            self._reply(identity, {"type": "stats", "job_id": message.get("job_id"), **self.stats()})
        elif kind == "configure":
            reply: dict[str, Any] = {"type": "configured", "job_id": message.get("job_id")}
            try:
                reply.update(ok=True, **self.models.configure(message))
            except BusError as exc:
                reply.update(ok=False, error=exc.to_wire())
            self._reply(identity, reply)
        elif kind == "cancel":
            ids = {i for i in message.get("job_ids", []) if isinstance(i, str)}
            self._peer_jobs.get(identity, set()).difference_update(ids)
            self._preparing.cancel(identity, ids)  # before the queues: see PreparePool
            for worker in self.models.worker_list():
                worker.cancel(ids)
            # Jobs held while models load honour cancel as queued ones do.
            self._held = [
                h for h in self._held if h.identity != identity or h.message.get("job_id") not in ids
            ]
        elif kind == "infer":
            self._accept(HeldJob(identity, message, time.monotonic()), stopping)
        else:
            log.warning("unknown internal message type %r", kind)

    def _accept(self, held: HeldJob, stopping: bool) -> None:
        identity, message = held.identity, held.message
        job_id = message.get("job_id", "")
        if not stopping and not self.models.loaded.is_set():
            # Jobs that arrive while models load wait for them, as many as the queues could
            # take; beyond that they are turned away for now.
            if len(self._held) >= self.held_limit:
                busy = BusError(OVERLOADED, "models are still loading and enough jobs wait for them",
                                retry_after_ms=1000)
                self._reply(identity, result_message(job_id, busy))
            else:
                self._held.append(held)
            return
        if isinstance(job_id, str) and job_id in self._peer_jobs.get(identity, ()):
            return  # resent while the first copy is queued or running: its result answers both
        try:
            if stopping:
                raise BusError(SHUTTING_DOWN, "the model manager is draining")
            self._submit(identity, message, held.received_at)
            self._peer_jobs.setdefault(identity, set()).add(job_id)
        except BusError as exc:
            self._reply(identity, result_message(job_id, exc))
        except Exception as exc:
            log.exception("cannot submit job %s", job_id)
            failure = internal_error(exc)
            self._reply(identity, result_message(job_id, failure))

    def _release_held(self, stopping: bool) -> None:
        held, self._held = self._held, []
        for job in held:
            self._accept(job, stopping)

    def _submit(self, identity: bytes, message: dict[str, Any], received_at: float) -> None:
        limit_ms = self.config.limits.request_timeout_ms
        timeout_ms = min(limit_ms, message.get("timeout_ms") or limit_ms)
        deadline = received_at + timeout_ms / 1000.0
        target_ms = message.get("target_ms")
        target = received_at + target_ms / 1000.0 if isinstance(target_ms, (int, float)) else None
        if deadline <= time.monotonic():  # held while models loaded, past its deadline
            raise BusError(TIMEOUT, "request expired while the models loaded")
        if not self.models.ready:
            raise BusError(MODEL_UNAVAILABLE, self.load_error or "models are still loading")
        try:
            job_id, task, request = message["job_id"], message["task"], message["request"]
        except KeyError as exc:
            raise BusError(BAD_REQUEST, f"internal message lacks {exc}") from None
        engine = self.models.engine_for(task, message.get("model_pref"))
        worker = self.models.worker(engine.name)
        if worker is None:
            raise BusError(MODEL_UNAVAILABLE, f"{engine.name} has no worker yet")
        priority = int(message.get("priority", 0))

        def prepare() -> Job:  # on a prepare thread
            started = time.perf_counter()
            try:
                prepared = engine.prepare(request)
            except BusError as exc:
                worker.count_refused(exc)
                raise
            return Job(job_id=job_id, model=engine.name, request=prepared,
                       key=(engine.name, engine.batch_key(prepared)), deadline=deadline, priority=priority,
                       target=target, reply_to=identity, cost=engine.cost(prepared),
                       prepare_s=time.perf_counter() - started)

        worker.expect()  # its company may be right behind it in the prepare pool
        self._preparing.submit(Arrival(identity, job_id, engine.name, prepare, left=worker.expected_left))

    def _hand_off(self, arrival: Arrival, prepared: Job | BusError) -> None:
        """On a prepare thread, in arrival order: queue the prepared job, or answer its error
        as the socket thread would have (the result path drops it from `_peer_jobs`)."""
        try:
            if isinstance(prepared, BusError):
                raise prepared
            worker = self.models.worker(arrival.lane)
            if worker is None:
                raise BusError(MODEL_UNAVAILABLE, f"{arrival.lane} has no worker")
            worker.submit(prepared)
        except BusError as exc:
            self._push_result(arrival.identity, arrival.job_id, result_message(arrival.job_id, exc))
        except Exception as exc:
            log.exception("cannot submit job %s", arrival.job_id)
            failure = internal_error(exc)
            self._push_result(arrival.identity, arrival.job_id, result_message(arrival.job_id, failure))

    def stats(self) -> dict[str, Any]:
        """The manager's figures (read by the metrics exporter on its own thread too)."""
        return {"instance": self.instance, "host": socket.gethostname(), "draining": self.draining,
                **self.models.snapshot()}


def result_message(job_id: str, outcome: Outcome, model: str | None = None) -> dict[str, Any]:
    if isinstance(outcome, BusError):
        return {"type": "result", "job_id": job_id, "ok": False, "error": outcome.to_wire()}
    return {"type": "result", "job_id": job_id, "ok": True, "result": {**outcome.to_wire(), "model": model}}
