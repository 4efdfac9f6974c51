"""The jobs an agent has at the model manager: bookkeeping only, with an explicit clock.

Each `InFlightJob` holds the "infer" message (kept so that it can be sent again: to a
restarted model manager, or after a refusal for now), its deadline, the client fields its
result is rendered with, and the `ReplySink` its answer goes to.

Contract: a job leaves only through `pop` (answered), `drop` (forgotten unanswered: its
client hung up or cancelled) or `expired` (the agent answers it with a timeout). `due(now)`
lists jobs whose retry time has come; `retry_later` sets one, but only while the deadline
leaves room for another try.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from agents.sinks import ReplySink

#: A job's deadline is its timeout plus this: beyond the model manager's own deadline, so
#: that its timeout error normally arrives first.
DEADLINE_GRACE_S = 2.0


@dataclass(eq=False)
class InFlightJob:
    job_id: str
    message: dict[str, Any]  # the "infer" message
    deadline: float  # monotonic
    sink: ReplySink
    fields: dict[str, Any] = field(default_factory=dict)  # the client fields, for rendering
    body: bytes | None = None  # the packed message, while it has not been sent
    retry_at: float = math.inf


class InFlight:
    def __init__(self) -> None:
        self._jobs: dict[str, InFlightJob] = {}

    def __len__(self) -> int:
        return len(self._jobs)

    def __iter__(self) -> Iterator[InFlightJob]:
        return iter(list(self._jobs.values()))

    def add(self, job: InFlightJob) -> None:
        self._jobs[job.job_id] = job

    def get(self, job_id: str) -> InFlightJob | None:
        return self._jobs.get(job_id)

    def pop(self, job_id: str) -> InFlightJob | None:
        return self._jobs.pop(job_id, None)

    def drop(self, predicate: Callable[[InFlightJob], bool]) -> list[str]:
        """Forget the matching jobs unanswered; their job_ids, to cancel at the model manager."""
        gone = [job_id for job_id, job in self._jobs.items() if predicate(job)]
        for job_id in gone:
            del self._jobs[job_id]
        return gone

    def expired(self, now: float) -> list[InFlightJob]:
        gone = [job for job in self._jobs.values() if job.deadline <= now]
        for job in gone:
            del self._jobs[job.job_id]
        return gone

    def retry_later(self, job: InFlightJob, now: float, delay_s: float) -> bool:
        """Keep `job` for another try after `delay_s`, if its deadline leaves room for it."""
        if not job.sink.retries or job.deadline <= now + delay_s:
            return False
        job.retry_at = now + delay_s
        self._jobs[job.job_id] = job
        return True

    def due(self, now: float) -> list[InFlightJob]:
        ready = [job for job in self._jobs.values() if job.retry_at <= now]
        for job in ready:
            job.retry_at = math.inf
        return ready

    def waiting_clients(self) -> bool:
        return any(job.sink.owner is not None for job in self._jobs.values())
