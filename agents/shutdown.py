"""How a service agent stops: what it still serves, what it refuses, and when it is done.

Contract:
- `begin(now)` starts the stop. From then on `admits(action)` lets in only the actions that
  start no new work (`SERVED_WHILE_STOPPING`); every other one is answered `shutting_down`.
- While stopping, the agent calls `refuse_waiting_work` every loop turn: each client whose
  job no model manager holds yet hears `shutting_down` at once, as no manager will take one
  now. Every turn, not once: a job a draining or lost manager gives back comes into the
  waiting line after the stop, and must not wait out its timeout.
- Jobs model managers hold run on: the loop ends (`over`) when no client waits any more, or
  `grace_s` after the stop, whichever comes first.
- `answer_everyone` then answers `shutting_down` to every client still waiting: in-flight
  jobs first, then each of `others` (stream readers, live streams).
- Journaled queue_for_batch jobs have no client waiting (`sink.owner` is None): they are
  never refused, and stay pending in the journal for the next start to resubmit.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import Protocol

from agents.inflight import InFlight, InFlightJob
from model_manager.errors import SHUTTING_DOWN, BusError

log = logging.getLogger(__name__)

#: How long jobs already at a model manager may take to finish once the stop has begun.
SHUTDOWN_GRACE_S = 30.0
#: Actions that start no new work, still answered while the agent drains for shutdown.
SERVED_WHILE_STOPPING = frozenset({"health", "stats", "get_result", "next_chunk", "voices", "cancel",
                                   "next_event", "stream_close"})


class WaitingLine(Protocol):
    """What the shutdown needs of the backend (agents/backend.py)."""

    def waiting(self) -> list[str]:
        """The jobs no model manager holds yet."""
        ...

    def forget(self, job_id: str) -> None: ...


class Shutdown:
    def __init__(self, inflight: InFlight, line: WaitingLine, fail: Callable[[InFlightJob, BusError], None],
                 grace_s: float = SHUTDOWN_GRACE_S) -> None:
        self.inflight = inflight
        self.line = line
        self.fail = fail  # Work.fail: the job's sink gets the error, rendered for its client
        self.grace_s = grace_s
        self.stopping = False
        self.deadline = math.inf

    def begin(self, now: float) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.deadline = now + self.grace_s
        log.info("shutting down: %d requests at model managers will finish", len(self.inflight))

    def admits(self, action: str) -> bool:
        return not self.stopping or action in SERVED_WHILE_STOPPING

    def refuse_waiting_work(self) -> None:
        gone = BusError(SHUTTING_DOWN, "the agent is shutting down; this request had not started")
        for job_id in self.line.waiting():
            job = self.inflight.get(job_id)
            if job is not None and job.sink.owner is not None:
                self.inflight.pop(job_id)
                self.line.forget(job_id)
                self.fail(job, gone)

    def over(self, now: float, clients_waiting: bool) -> bool:
        """Whether the loop may end: nobody waits for a reply, or the grace time is up."""
        return self.stopping and (not clients_waiting or now >= self.deadline)

    def answer_everyone(self, others: Iterable[Callable[[BusError], None]] = ()) -> None:
        gone = BusError(SHUTTING_DOWN, "the agent shut down before this request finished")
        for job in self.inflight:
            if job.sink.owner is not None:
                self.inflight.pop(job.job_id)
                self.fail(job, gone)
        for answer in others:
            answer(gone)
