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

This is the socket loop; its parts each have a module:
- admission.py: an "infer" into its model's queue (held while the models load, prepared off
  this thread, resends ignored), cancels, and the jobs each agent has here;
- replies.py: the shape of every reply; result_pipe.py: answers made on other threads,
  carried to this one (sockets are not thread-safe);
- models.py: the models and their workers; agent_links.py: the links to the agents.

On SIGTERM it drains: it tells the agents (no new work comes), answers new jobs with
shutting_down (the agent sends them elsewhere), finishes what it holds within
`model_manager.drain_timeout_s`, says DISCONNECT and exits.

A message that fails in an unexpected way is logged with its traceback and, when it names a
job_id, answered with `internal_error` and the cause: nothing an agent sends can stop this
process or leave the agent waiting for its timeout.

Every "infer" gets exactly one "result" {job_id, ok, result | error}, including on
shutdown (queued jobs get shutting_down) and on failure (never placeholder output).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import zmq

from model_manager import link_protocol as link
from model_manager import replies
from model_manager.admission import Admission
from model_manager.agent_links import AgentLinks
from model_manager.config import Config
from model_manager.engines.base import Engine
from model_manager.jobs import Job, Outcome
from model_manager.metrics import BusMetrics, Exporter
from model_manager.models import ModelSet
from model_manager.result_pipe import ResultPipe

log = logging.getLogger(__name__)

POLL_MS = 100
#: /livez fails once the socket loop has not come round for this long: a hung manager.
LOOP_STALL_S = 30.0


class ModelManagerAgent:
    def __init__(
        self, config: Config, engines: Sequence[Engine] | None = None, context: zmq.Context | None = None
    ) -> None:
        self.config = config
        self.context = context or zmq.Context.instance()
        # Tells agents that a restarted model manager is a new instance with no jobs in flight.
        self.instance = uuid.uuid4().hex
        self.results = ResultPipe(self.context, self.instance)
        self.models = ModelSet(config, self._deliver, engines)
        self._preloaded = engines is not None
        self.admission = Admission(config, self.models, self._reply, self.results.push)
        self.draining = False
        self.last_turn = time.monotonic()
        self.metrics = BusMetrics(read_stats=self.stats, read_records=self.models.worker_records)

    def load_models(self) -> None:
        self.models.load()

    @property
    def load_error(self) -> str | None:
        return self.models.load_error

    @property
    def held_limit(self) -> int:
        """Jobs held while models load (see Admission)."""
        return self.admission.held_limit

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
        results = self.results.open()
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
                        self._forward_results()
                    else:
                        for key, message in self.links.receive(sock):
                            self._handle(key, message, stopping)
                if self.admission.holding and (self.models.loaded.is_set() or stopping):
                    self.admission.release_held(stopping)
                if not announced and self.models.ready:
                    self.links.announce(self.ready_message())
                    announced = True
                for key in self.links.tick(time.monotonic(), self.heartbeat()):
                    self._drop_agent_jobs(key, "is silent")
            for worker in self.models.worker_list():
                worker.stop()  # anything still queued past the drain gets shutting_down
            self.admission.release_held(stopping=True)
            self.admission.close()
            self._forward_results()
            self.links.say_goodbye("drained" if self._drained() else "stopped at the drain timeout")
        finally:
            if exporter is not None:
                exporter.close()
            self.results.close()
            self.links.close()

    def _drained(self) -> bool:
        workers = self.models.worker_list()
        return not self.admission.preparing and not any(w.queue_depth() or w.busy for w in workers)

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

    def _forward_results(self) -> None:
        for answer in self.results.take():
            self.admission.answered(answer.identity, answer.job_id)
            self.links.send(answer.identity, {}, answer.body)

    def _drop_agent_jobs(self, peer: bytes, why: str) -> None:
        dropped = self.admission.drop_agent(peer)
        if dropped:
            log.warning("agent %s %s; dropped %d of its queued jobs", peer.decode(errors="replace"), why,
                        dropped)

    def _reply(self, identity: bytes, message: dict[str, Any]) -> None:
        self.links.send(identity, message)

    def _deliver(self, job: Job, outcome: Outcome) -> None:
        """Called on worker threads: hand the answer to the socket thread."""
        self.results.push(job.reply_to, job.job_id, replies.result(job.job_id, outcome, model=job.model))

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
            failure = replies.failed(kind, message.get("job_id"), exc)
            if failure is not None:
                self._reply(identity, failure)

    def _dispatch(self, identity: bytes, kind: Any, message: dict[str, Any], stopping: bool) -> None:
        if kind == "stats":
            self._reply(identity, replies.stats(message.get("job_id"), self.stats()))
        elif kind == "configure":
            self._reply(identity, replies.configured(message.get("job_id"),
                                                     lambda: self.models.configure(message)))
        elif kind == "cancel":
            self.admission.cancel(identity, {i for i in message.get("job_ids", []) if isinstance(i, str)})
        elif kind == "infer":
            self.admission.accept(identity, message, stopping)
        else:
            log.warning("unknown internal message type %r", kind)

    def stats(self) -> dict[str, Any]:
        """The manager's figures (read by the metrics exporter on its own thread too)."""
        return {"instance": self.instance, "host": socket.gethostname(), "draining": self.draining,
                **self.models.snapshot()}
