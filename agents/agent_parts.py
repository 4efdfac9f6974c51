"""The parts of one service agent, made together and wired to each other, and the events
that reach all of them.

The socket loop (agents/service_agent.py) reads client requests and routes each action to
its handler in `handlers`; what an agent does beyond moving messages is in the parts made
here: the backend (model managers), the work actions, the control actions, TTS streams, live
STT streams, the shutdown policy, the journal and the metrics. Contract:
- `handlers` maps every action this agent serves to its handler; it is made once, and its
  order is the order an `unknown_action` error lists the actions in;
- `readable()`: the sockets besides the client socket the loop polls, each with its step;
- `client_gone(routing_id)`: a client's connection closed; the jobs it waits for are
  dropped before they run (cancelled at their model manager, counted), and every part
  forgets it. queue_for_batch jobs and streams are fetched by request_id from any socket:
  they carry on;
- `tick(now)`: every part's deadlines, in one pass of the loop: requests past their timeout
  are answered `timeout`, jobs turned away for now earlier are sent again, streams and
  control calls expire, the journal is purged, the metrics are brought up to date;
- `clients_waiting()`: whether a client still waits for a reply from a part (the stop
  waits for them, `shutdown`); `answer_everyone()` answers all of them at the end;
- `figures()`: the agent's own numbers, which `stats` replies carry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from agents.backend import Backend
from agents.control import AgentCounters, agent_stats
from agents.control_actions import ControlActions
from agents.inflight import InFlight
from agents.intake import Prepared
from agents.live_host import LiveStreamHost
from agents.metrics import AgentMetrics
from agents.results import ResultStore
from agents.services import Service
from agents.shutdown import Shutdown
from agents.sinks import ClientCall, Send
from agents.stream_actions import StreamActions
from agents.stream_driver import StreamDriver, StreamJob
from agents.streams import StreamRegistry
from agents.work import Work
from model_manager.config import Config
from model_manager.metrics import Exporter

log = logging.getLogger(__name__)

# Expired results are deleted from the journal at most this often.
PURGE_INTERVAL_S = 1.0

Handler = Callable[[ClientCall, Prepared], None]


class AgentParts:
    def __init__(self, service: Service, config: Config, context: zmq.Context, port: int, send: Send,
                 counters: AgentCounters) -> None:
        task, limits = service.task, config.limits
        self.service = service
        self.config = config
        self.counters = counters
        self.results = ResultStore(limits.result_ttl_s, journal_path(config, task, port))
        self.inflight = InFlight()
        # Parts that call each other both ways reach the later ones through lambdas: those
        # run only once everything here is made.
        self.backend = Backend(config, task, self.inflight,
                               lambda job, outcome: self.work.answer(job, outcome),
                               lambda identity, answer: self.control.on_answer(identity, answer))
        self.shutdown = Shutdown(self.inflight, self.backend, lambda job, error: self.work.fail(job, error))
        self.streams: StreamRegistry[StreamJob] = StreamRegistry(limits.max_open_streams)
        self.stream_driver = StreamDriver(
            self.streams, self.inflight, lambda job: self.work.submit(job), send,
            lambda job_ids: self.work.cancel_at_model_manager(job_ids), lambda: self.shutdown.stopping,
        )
        self.live = (LiveStreamHost(context, config, send, self.backend.model_for, self.inflight,
                                    lambda: self.work) if task == "stt" else None)
        self.work = Work(service, limits, self.inflight, self.backend, self.results, send, self.stream_driver,
                         self.live.streams if self.live is not None else None)
        self.control = ControlActions(task, self.backend, send, self.figures, lambda: self.shutdown.stopping)
        self.metrics = AgentMetrics(task, self.backend.configured)
        self.handlers = self._handler_table(send)
        self._exporter: Exporter | None = None
        self._next_purge = 0.0

    def _handler_table(self, send: Send) -> dict[str, Handler]:
        svc, work, control = self.service, self.work, self.control
        handlers: dict[str, Handler] = {
            "health": control.health,
            "stats": control.stats,
            "get_result": work.get_result,
            "cancel": work.cancel,
            "configure": control.configure,
            svc.single_action: work.single,
            "queue_for_batch": work.queue_for_batch,
            svc.batch_action: work.batch,
        }
        if svc.split_for_stream is not None:
            streams = StreamActions(self.config.limits, work, self.stream_driver, send)
            handlers.update(stream=streams.stream, next_chunk=streams.next_chunk)
        if svc.task == "tts":
            handlers["voices"] = control.voices
        if self.live is not None:
            live = self.live
            handlers.update(stream_open=live.open, stream_audio=live.audio, next_event=live.next_event,
                            stream_close=live.close)
        return handlers

    def readable(self) -> dict[zmq.Socket, Callable[[], None]]:
        steps: dict[zmq.Socket, Callable[[], None]] = {self.backend.socket: self.backend.receive}
        if self.live is not None:
            steps[self.live.streams.worker.wake] = self.live.on_worker
        return steps

    def start(self) -> None:
        """Serve the metrics, and take up the jobs the journal kept from a previous run."""
        self._exporter = self.metrics.start(self.config, self.service.task)
        self.work.recover_journal()

    def close(self) -> None:
        if self.live is not None:
            self.live.streams.worker.close()
        self.backend.close()
        if self._exporter is not None:
            self._exporter.close()
        self.results.close()

    # --- events ---------------------------------------------------------------------------

    def client_gone(self, routing_id: bytes) -> None:
        jobs = self.inflight.drop(lambda job: job.sink.owner == routing_id)
        self.counters.dropped_for_gone_clients += len(jobs)
        self.work.cancel_at_model_manager(jobs)
        self.stream_driver.client_gone(routing_id)
        self.control.client_gone(routing_id)
        if self.live is not None:
            self.live.streams.client_gone(routing_id, time.monotonic())
        if jobs:
            log.info("a client went away: %d of its jobs dropped before they ran", len(jobs))

    def tick(self, now: float) -> None:
        if self.live is not None:
            self.live.streams.tick(now)
        self.work.tick(now)
        self.backend.tick(now)
        self.stream_driver.expire(now)
        self.control.tick(now)
        if now >= self._next_purge:
            self.results.purge(time.time())
            self._next_purge = now + PURGE_INTERVAL_S
        self.metrics.update(self.backend, self.live.streams.stats() if self.live is not None else None)

    def clients_waiting(self) -> bool:
        return (self.inflight.waiting_clients() or self.control.waiting()
                or self.stream_driver.readers_waiting()
                or (self.live is not None and self.live.streams.waiting_clients()))

    def answer_everyone(self) -> None:
        others = [self.stream_driver.answer_readers]
        if self.live is not None:
            others.append(self.live.streams.stop)
        self.shutdown.answer_everyone(others)

    def figures(self) -> dict[str, Any]:
        figures = agent_stats(self.service.task, self.counters, len(self.inflight), len(self.results),
                              len(self.streams))
        figures.update(self.backend.stats())
        if self.live is not None:
            figures["live"] = self.live.streams.stats()
        return figures


def journal_path(config: Config, task: str, port: int) -> Path:
    """One journal file per agent; the port is in the name so that two buses sharing a
    journal_dir never take up each other's jobs."""
    return Path(config.limits.journal_dir).expanduser() / f"{task}-{port}.sqlite3"
