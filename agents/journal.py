"""queue_for_batch jobs in the journal (agents/results.py): what is written before "queued"
goes out, and how a restarted agent takes the jobs up again. Wall-clock times, since a
journal outlives the process."""

from __future__ import annotations

import time
import uuid
from typing import Any

from agents.inflight import InFlightJob
from agents.results import ResultStore
from agents.sinks import QueuedReply
from model_manager import protocol
from model_manager.errors import TIMEOUT, BusError


def journal_entry(job: InFlightJob, render_fields: tuple[str, ...]) -> dict[str, Any]:
    """What the journal keeps of a queued job: its message (less the job_id, which a
    restarted agent renews), the client fields its result is rendered with, its deadline."""
    fields = job.fields
    return {
        "message": {k: v for k, v in job.message.items() if k != "job_id"},
        "fields": {k: fields[k] for k in ("request_id", *render_fields) if k in fields},
        "deadline_at": time.time() + (job.deadline - time.monotonic()),
    }


def recover(results: ResultStore) -> tuple[list[InFlightJob], int]:
    """The journaled jobs of a previous run, each under a new job_id (so that cancelling the
    dead run's copies cannot touch them), and how many had timed out meanwhile (those get
    their timeout error as their result)."""
    wall, mono = time.time(), time.monotonic()
    jobs: list[InFlightJob] = []
    expired = 0
    for request_id, journaled in results.pending():
        if journaled is None or journaled.get("deadline_at", 0.0) <= wall:
            expired += 1
            reply = protocol.error_reply(BusError(TIMEOUT, "no result within the request timeout"))
            results.complete(request_id, {**reply, "request_id": request_id}, wall)
            continue
        left_s = journaled["deadline_at"] - wall
        job_id = uuid.uuid4().hex
        message = {**journaled["message"], "job_id": job_id, "timeout_ms": max(1, int(left_s * 1000))}
        sink = QueuedReply(request_id, results)
        jobs.append(InFlightJob(job_id, message, mono + left_s, sink, journaled.get("fields", {})))
    return jobs, expired
