"""Admission: an agent's "infer" into its model's queue, and which jobs each agent has here.

Contract
--------
- `accept(identity, message, stopping)` takes one "infer" {job_id, task, model_pref,
  request, priority, timeout_ms, target_ms}. Each gets exactly one "result" (at once through
  `reply`, or later through `push`), except a job whose job_id the same agent already has
  here, which is ignored (agents resend their jobs after a silence, and the first copy's
  result answers both), and a job cancelled or dropped before it ran (nobody waits for it).
- While the models load, jobs are held, as many as every model's queue could take
  (`held_limit`); one more is answered `overloaded` (retry in a second). A held job keeps its
  arrival time: its deadline counts from then. `release_held(stopping)` admits them once the
  models are loaded, or a drain begins.
- While the manager drains (`stopping`), a job is answered `shutting_down`: the agent sends
  it to another manager.
- A job's deadline is its arrival plus its `timeout_ms` (at most
  `limits.request_timeout_ms`), its target its arrival plus `target_ms`. A job already past
  its deadline is answered `timeout`, one that comes before the models are ready
  `model_unavailable`, one that lacks a field `bad_request`, and an unexpected failure
  `internal_error` with its cause.
- The engine's `prepare` (checks; Whisper's speech detection) runs on a `PreparePool`
  (preparing.py), off the socket thread; prepared jobs enter their model's queue in arrival
  order, and a job whose `prepare` raised is answered with that error.
- `cancel(identity, job_ids)` and `drop_agent(identity)` take jobs out wherever they are:
  preparing, queued or held. They are not answered. `answered(identity, job_id)`: its result
  went out, so a new copy of that job would be a new job.

Threads: everything here runs on the socket thread, except the hand-off of a prepared job,
on a prepare thread, which only queues the job or answers through `push` (the result pipe).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from model_manager import replies
from model_manager.config import Config
from model_manager.errors import (
    BAD_REQUEST,
    MODEL_UNAVAILABLE,
    OVERLOADED,
    SHUTTING_DOWN,
    TIMEOUT,
    BusError,
    internal_error,
)
from model_manager.jobs import Clock, Job
from model_manager.models import ModelSet
from model_manager.preparing import Arrival, PreparePool

log = logging.getLogger(__name__)

#: Sends a reply to an agent now (socket thread).
Reply = Callable[[bytes, dict[str, Any]], None]
#: Sends a job's answer through the result pipe (any thread).
Push = Callable[[bytes, str, dict[str, Any]], None]


@dataclass
class HeldJob:
    """An "infer" that arrived while the models load: it keeps its arrival time, so that its
    deadline counts from then, not from when the models are ready."""

    identity: bytes
    message: dict[str, Any]
    received_at: float  # monotonic


class Admission:
    def __init__(self, config: Config, models: ModelSet, reply: Reply, push: Push,
                 clock: Clock = time.monotonic) -> None:
        self.config = config
        self.models = models
        self._reply = reply
        self._push = push
        self._clock = clock
        self._held: list[HeldJob] = []
        # Every agent's jobs not answered yet, to drop a dead agent's jobs and to ignore
        # resent ones.
        self._peer_jobs: dict[bytes, set[str]] = {}
        self._preparing = PreparePool(self._hand_off)

    @property
    def held_limit(self) -> int:
        """Jobs held while models load: as many as every model's queue could take."""
        models = len(self.config.stt_models) + len(self.config.tts_models)
        return self.config.batch_processing_config.max_queue_size * max(1, models)

    @property
    def holding(self) -> bool:
        return bool(self._held)

    @property
    def preparing(self) -> int:
        """Jobs still being prepared (or waiting for their turn to enter their queue)."""
        return self._preparing.busy

    def close(self) -> None:
        """Wait until every job in preparation has been queued or answered."""
        self._preparing.close()

    # --- in --------------------------------------------------------------------------------

    def accept(self, identity: bytes, message: dict[str, Any], stopping: bool) -> None:
        self._admit(HeldJob(identity, message, self._clock()), stopping)

    def release_held(self, stopping: bool) -> None:
        held, self._held = self._held, []
        for job in held:
            self._admit(job, stopping)

    def _admit(self, held: HeldJob, stopping: bool) -> None:
        identity, message = held.identity, held.message
        job_id = message.get("job_id", "")
        if not stopping and not self.models.loaded.is_set():
            # Jobs that arrive while models load wait for them, as many as the queues could
            # take; beyond that they are turned away for now.
            if len(self._held) >= self.held_limit:
                busy = BusError(OVERLOADED, "models are still loading and enough jobs wait for them",
                                retry_after_ms=1000)
                self._reply(identity, replies.result(job_id, busy))
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
            self._reply(identity, replies.result(job_id, exc))
        except Exception as exc:
            log.exception("cannot submit job %s", job_id)
            self._reply(identity, replies.result(job_id, internal_error(exc)))

    def _submit(self, identity: bytes, message: dict[str, Any], received_at: float) -> None:
        limit_ms = self.config.limits.request_timeout_ms
        timeout_ms = min(limit_ms, message.get("timeout_ms") or limit_ms)
        deadline = received_at + timeout_ms / 1000.0
        target_ms = message.get("target_ms")
        target = received_at + target_ms / 1000.0 if isinstance(target_ms, (int, float)) else None
        if deadline <= self._clock():  # held while models loaded, past its deadline
            raise BusError(TIMEOUT, "request expired while the models loaded")
        if not self.models.ready:
            raise BusError(MODEL_UNAVAILABLE, self.models.load_error or "models are still loading")
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
        as the socket thread would have (the result's way out calls `answered`)."""
        try:
            if isinstance(prepared, BusError):
                raise prepared
            worker = self.models.worker(arrival.lane)
            if worker is None:
                raise BusError(MODEL_UNAVAILABLE, f"{arrival.lane} has no worker")
            worker.submit(prepared)
        except BusError as exc:
            self._push(arrival.identity, arrival.job_id, replies.result(arrival.job_id, exc))
        except Exception as exc:
            log.exception("cannot submit job %s", arrival.job_id)
            self._push(arrival.identity, arrival.job_id, replies.result(arrival.job_id, internal_error(exc)))

    # --- out -------------------------------------------------------------------------------

    def answered(self, identity: bytes, job_id: str) -> None:
        self._peer_jobs.get(identity, set()).discard(job_id)

    def cancel(self, identity: bytes, job_ids: set[str]) -> None:
        """The agent's client has gone: these jobs are dropped wherever they are, unanswered."""
        self._peer_jobs.get(identity, set()).difference_update(job_ids)
        self._preparing.cancel(identity, job_ids)  # before the queues: see PreparePool
        for worker in self.models.worker_list():
            worker.cancel(job_ids)
        # Jobs held while models load honour cancel as queued ones do.
        self._held = [
            h for h in self._held if h.identity != identity or h.message.get("job_id") not in job_ids
        ]

    def drop_agent(self, identity: bytes) -> int:
        """Drop the queued and held jobs of an agent that is silent or forgot us: they would
        run for nobody. A running batch still finishes (its results go nowhere). The agent
        sends its jobs again, to us or another manager, so nothing is lost either way. How
        many jobs were dropped."""
        jobs = self._peer_jobs.pop(identity, set())
        dropped = self._preparing.cancel(identity, jobs) if jobs else 0  # before the queues: see PreparePool
        dropped += sum(w.cancel(jobs) for w in self.models.worker_list()) if jobs else 0
        held = len(self._held)
        self._held = [h for h in self._held if h.identity != identity]
        return dropped + held - len(self._held)
