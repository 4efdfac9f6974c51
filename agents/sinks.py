"""Where the answer to one job goes: one `ReplySink` type, whatever asked for the job.

A sink receives the job's outcome (its model manager's result, or the BusError that ended
it) through `take`. A sink whose answer goes to a client has it rendered for the wire and
takes the entry (a success or an error reply) through `deliver`; one whose answer stays in
the agent (`DecodeReply`, a live stream's decode) takes the outcome itself, typed. The agent
never branches on what kind of request a job came from: it asks the sink who its client is
(`owner`, for dropping the jobs of a client that hung up), whether a refusal for now is
retried by the agent (`retries`: the client cannot send the job again, having only a
request_id), and hands it the outcome.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agents.live.decodes import DecodeOutcome, decode_outcome
from agents.results import ResultStore
from agents.streams import Stream
from model_manager.errors import BusError

Entry = dict[str, Any]
#: A job's end: its model manager's result, or why it has none.
Outcome = dict[str, Any] | BusError
#: Renders an outcome as the job's reply entry (`Work.render`).
Render = Callable[[Outcome], Entry]


@dataclass(eq=False)
class ClientCall:
    """A client waiting for one reply: its ROUTER envelope and the encoding it spoke."""

    envelope: list[bytes]
    encoding: Any
    request_id: Any = None

    @property
    def routing_id(self) -> bytes:
        return self.envelope[0]


Send = Callable[[ClientCall, Entry], None]


class ReplySink(ABC):
    #: The client's routing id when a connection waits for the reply; None when the result
    #: is fetched later by request_id (queue_for_batch, streams).
    owner: bytes | None = None
    #: Retry a refusal for now (overloaded, restarting) until the job's deadline.
    retries: bool = False

    def take(self, outcome: Outcome, render: Render) -> None:
        """Take the job's outcome; a sink whose answer goes to a client delivers it rendered."""
        self.deliver(render(outcome))

    @abstractmethod
    def deliver(self, entry: Entry) -> None:
        """Take the job's final reply entry."""


@dataclass(eq=False)
class ClientReply(ReplySink):
    """One client waiting for this one answer (transcribe, synthesize)."""

    call: ClientCall
    send: Send

    def __post_init__(self) -> None:
        self.owner = self.call.routing_id

    def deliver(self, entry: Entry) -> None:
        self.send(self.call, entry)


@dataclass(eq=False)
class BatchCall:
    """A batch request: answered when every item has an entry, in order."""

    call: ClientCall
    send: Send
    entries: list[Entry | None]
    pending: int = 0

    def item_done(self, index: int, entry: Entry) -> None:
        self.entries[index] = entry
        self.pending -= 1
        self.finish_if_done()

    def finish_if_done(self) -> None:
        if self.pending == 0:
            self.send(self.call, {"status": "success", "results": self.entries})


@dataclass(eq=False)
class BatchItemReply(ReplySink):
    batch: BatchCall
    index: int
    item_request_id: Any = None

    def __post_init__(self) -> None:
        self.owner = self.batch.call.routing_id

    def deliver(self, entry: Entry) -> None:
        if entry.get("request_id") is None:
            entry["request_id"] = self.item_request_id if self.item_request_id is not None else self.index
        self.batch.item_done(self.index, entry)


@dataclass(eq=False)
class QueuedReply(ReplySink):
    """A queue_for_batch job: its result goes to the journal, for get_result."""

    request_id: str
    store: ResultStore
    retries: bool = field(default=True)

    def deliver(self, entry: Entry) -> None:
        self.store.complete(self.request_id, {**entry, "request_id": self.request_id}, time.time())


@dataclass(eq=False)
class DecodeReply(ReplySink):
    """A live stream's decode (agents/live/streams.py): its outcome goes to the stream as a
    `Decoded` or the BusError, never rendered as a reply."""

    on_decoded: Callable[[DecodeOutcome], None]
    retries: bool = False

    def take(self, outcome: Outcome, render: Render) -> None:
        self.on_decoded(decode_outcome(outcome))

    def deliver(self, entry: Entry) -> None:
        raise TypeError("a live decode takes its outcome (take), never a rendered reply")


@dataclass(eq=False)
class StreamReply(ReplySink):
    """One output of a stream; `on_output` lets the agent release more jobs and answer a
    waiting reader."""

    stream: Stream[Any]
    job_id: str
    on_output: Callable[[Stream[Any]], None]
    retries: bool = field(default=True)

    def deliver(self, entry: Entry) -> None:
        if self.stream.fulfil(self.job_id, entry):
            self.on_output(self.stream)
