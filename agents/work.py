"""The work actions of a service agent: single and batch requests, queue_for_batch with its
journal and get_result, cancel, and delivering each job's outcome to its reply sink.

Contract:
- `Work` never touches the client socket: every reply goes out through the `send` callback,
  and every job through `submit`, which keeps it in the in-flight table until `answer`;
- a job no model manager can ever take (unknown model, too many waiting) is answered at
  once; the others wait at the backend (agents/backend.py) for a manager with credit;
- a queue_for_batch job is journaled before "queued" goes out, and `recover_journal` takes
  up the jobs a previous run left there;
- `answer` hands each job's outcome to its sink exactly once (a sink for a client has it
  rendered as its reply, `render`), except that a refusal for now of a job whose client
  cannot resend it is kept for another try; `fail` ends a job with an error, never retried.
The socket loop (agents/service_agent.py) routes frames here and model manager results to
`answer`; it owns the in-flight table, the backend, the journal and the streams.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from typing import Any

from agents.backend import Backend
from agents.inflight import DEADLINE_GRACE_S, InFlight, InFlightJob
from agents.intake import Item, Prepared
from agents.journal import journal_entry, recover
from agents.live.streams import LiveStreams
from agents.options import check_options, echoable, request_key, required
from agents.results import ResultStore
from agents.services import Service
from agents.sinks import (
    BatchCall,
    BatchItemReply,
    ClientCall,
    ClientReply,
    Outcome,
    QueuedReply,
    ReplySink,
    Send,
)
from agents.stream_driver import StreamDriver
from model_manager import protocol
from model_manager.batcher import BULK, INTERACTIVE
from model_manager.config import Limits
from model_manager.errors import (
    CANCELLED,
    DUPLICATE_REQUEST_ID,
    INTERNAL,
    INVALID_FIELD,
    NOT_FOUND,
    RETRYABLE,
    TIMEOUT,
    BusError,
    internal_error,
)

log = logging.getLogger(__name__)

# A job the model manager turns away for now (errors.RETRYABLE) is sent again after this.
QUEUED_RETRY_S = 1.0


class Work:
    def __init__(self, service: Service, limits: Limits, inflight: InFlight, backend: Backend,
                 results: ResultStore, send: Send, stream_driver: StreamDriver,
                 live: LiveStreams | None) -> None:
        self.service = service
        self.limits = limits
        self.inflight = inflight
        self.backend = backend
        self.results = results
        self.send = send
        self.stream_driver = stream_driver
        self.live = live

    # --- jobs -----------------------------------------------------------------------------

    def new_job(self, job_id: str, fields: dict[str, Any], request: dict[str, Any], sink: ReplySink,
                default_priority: int) -> InFlightJob:
        """The job for one client item, its priority and timeout from the item's own fields."""
        options = check_options(fields)
        timeout = options.timeout_within(self.limits.request_timeout_ms)
        return self.job(job_id, fields, request, sink, options.priority_level(default_priority), timeout)

    def job(self, job_id: str, fields: dict[str, Any], request: dict[str, Any], sink: ReplySink,
            job_priority: int, timeout: int, target_ms: int | None = None) -> InFlightJob:
        """An infer job; BusError if its message cannot be packed (e.g. a string with lone
        surrogates, which UTF-8 cannot carry). `target_ms`: when the answer is wanted (soft;
        it sizes the batches the job waits in, see docs/protocol.md)."""
        message = {
            "type": "infer",
            "job_id": job_id,
            "task": self.service.task,
            "model_pref": fields.get("model_pref"),
            "request": request,
            "priority": job_priority,
            "timeout_ms": timeout,
        }
        if target_ms is not None:
            message["target_ms"] = target_ms
        try:
            body = protocol.pack(message)
        except (TypeError, ValueError, OverflowError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            raise BusError(
                INVALID_FIELD, f"the request holds a value that cannot be forwarded ({reason:.200})"
            ) from None
        deadline = time.monotonic() + timeout / 1000.0 + DEADLINE_GRACE_S
        return InFlightJob(job_id, message, deadline, sink, fields, body)

    def submit(self, job: InFlightJob) -> None:
        # The message is kept until answered: if its model manager is lost, it is sent again.
        self.inflight.add(job)
        try:
            self.backend.submit(job)
        except BusError as exc:  # unknown model, or too many waiting for one
            self.inflight.pop(job.job_id)
            self.answer(job, exc)

    def cancel_at_model_manager(self, job_ids: list[str]) -> None:
        if job_ids:
            self.backend.cancel(job_ids)

    def answer(self, job: InFlightJob, outcome: Outcome) -> None:
        """Deliver `job`'s outcome to its sink, or keep it for another try: a refusal for now
        (overloaded, restarting) of a job whose client cannot resend it."""
        if isinstance(outcome, BusError) and outcome.code in RETRYABLE:
            hint_s = (outcome.retry_after_ms or 0) / 1000.0
            if self.inflight.retry_later(job, time.monotonic(), max(QUEUED_RETRY_S, hint_s)):
                return
        job.sink.take(outcome, functools.partial(self.render, job))

    def tick(self, now: float) -> None:
        """Jobs past their timeout end with `timeout` (and are cancelled where they run);
        jobs turned away for now earlier get another try once due."""
        expired = self.inflight.expired(now)
        self.cancel_at_model_manager([job.job_id for job in expired])
        for job in expired:
            self.fail(job, BusError(TIMEOUT, "no result within the request timeout"))
        for job in self.inflight.due(now):
            self.submit(job)

    def fail(self, job: InFlightJob, error: BusError) -> None:
        """End `job` with `error` (its timeout, the agent shutting down): no other try."""
        job.sink.take(error, functools.partial(self.render, job))

    def render(self, job: InFlightJob, outcome: Outcome) -> dict[str, Any]:
        rid = job.fields.get("request_id")
        if isinstance(outcome, BusError):
            return protocol.error_reply(outcome, rid)
        try:
            entry = {"status": "success", "request_id": rid,
                     **self.service.render_result(outcome, job.fields, self.limits)}
            if "timing" in outcome:
                entry["timing"] = outcome["timing"]
            return entry
        except BusError as exc:  # e.g. the output_path file cannot be written
            return protocol.error_reply(exc, rid)
        except Exception as exc:  # a bug must cost this reply, not the agent
            log.exception("rendering a result failed")
            return protocol.error_reply(internal_error(exc), rid)

    # --- actions --------------------------------------------------------------------------

    def single(self, call: ClientCall, prepared: Prepared) -> None:
        item = prepared.items[0]
        sink = ClientReply(call, self.send)
        self.submit(self.new_job(uuid.uuid4().hex, item.fields, _request(item), sink, INTERACTIVE))

    def batch(self, call: ClientCall, prepared: Prepared) -> None:
        # One count for the loop itself: the reply goes out once it is done and every item is.
        batch = BatchCall(call, self.send, [None] * len(prepared.items), pending=1)
        for index, item in enumerate(prepared.items):
            rid = echoable(item.fields.get("request_id", index), default=index)
            try:
                if item.error is not None:
                    raise item.error
                sink = BatchItemReply(batch, index, rid)
                job = self.new_job(uuid.uuid4().hex, item.fields, _request(item), sink, INTERACTIVE)
            except BusError as exc:
                batch.entries[index] = protocol.error_reply(exc, rid)
                continue
            batch.pending += 1
            self.submit(job)
        batch.pending -= 1
        batch.finish_if_done()

    def queue_for_batch(self, call: ClientCall, prepared: Prepared) -> None:
        item = prepared.items[0]
        fields = item.fields
        request_id = request_key(fields.get("request_id") or uuid.uuid4().hex)
        sink = QueuedReply(request_id, self.results)
        job = self.new_job(uuid.uuid4().hex, fields, _request(item), sink, BULK)
        # Journaled before "queued" goes out: from then on a crash of this agent loses nothing.
        journaled = journal_entry(job, self.service.render_fields)
        if not self.results.add_pending(request_id, time.time(), journaled):
            raise BusError(DUPLICATE_REQUEST_ID, f"request_id {request_id!r} is already queued or unfetched")
        self.submit(job)
        self.send(call, {"status": "queued", "request_id": request_id})

    def recover_journal(self) -> None:
        """Take up the journaled jobs of a previous run: they wait for a model manager like
        any new job."""
        jobs, expired = recover(self.results)
        for job in jobs:
            self.submit(job)
        if jobs or expired:
            log.warning("journal: resuming %d queued requests; %d timed out while down", len(jobs), expired)

    def get_result(self, call: ClientCall, prepared: Prepared) -> None:
        request_id = request_key(required(prepared.message, "request_id"))
        found = self.results.fetch(request_id, time.time())
        if found is None:
            raise BusError(
                NOT_FOUND, f"no result for request_id {request_id!r}: unknown, already fetched, or expired"
            )
        self.send(call, found)

    def cancel(self, call: ClientCall, prepared: Prepared) -> None:
        """Stop a queue_for_batch request or a stream: what has not run yet never runs; a
        later get_result answers `cancelled`. A finished result is left to get_result."""
        request_id = request_key(required(prepared.message, "request_id"))
        if self.live is not None and self.live.cancel(call, request_id):
            return
        cancelled = BusError(CANCELLED, "cancelled by its client")
        if not self.stream_driver.close(request_id, cancelled):
            jobs = self.inflight.drop(
                lambda job: isinstance(job.sink, QueuedReply) and job.sink.request_id == request_id
            )
            if jobs:
                self.results.complete(request_id, protocol.error_reply(cancelled, request_id), time.time())
                self.cancel_at_model_manager(jobs)
            elif self.results.contains(request_id, time.time()):
                self.send(call, {"status": "success", "request_id": request_id, "cancelled": False,
                                 "message": "already finished; get_result returns its result"})
                return
            else:
                raise BusError(NOT_FOUND, f"nothing to cancel for request_id {request_id!r}: "
                                          "unknown, finished and fetched, or expired")
        self.send(call, {"status": "success", "request_id": request_id, "cancelled": True})


def _request(item: Item) -> dict[str, Any]:
    if item.request is None:  # pragma: no cover - intake sets one or the other
        raise item.error or BusError(INTERNAL, "an item without a request")
    return item.request
