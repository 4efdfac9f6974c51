"""Where the answer to one job goes: one `ReplySink` type, whatever asked for the job.

A sink receives one finished reply entry (a success or an error reply, already rendered for
the wire) through `deliver`. The agent never branches on what kind of request a job came
from: it asks the sink who its client is (`owner`, for dropping the jobs of a client that
hung up), whether a refusal for now is retried by the agent (`retries`: the client cannot
send the job again, having only a request_id), and hands it the entry.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agents.results import ResultStore
from agents.streams import Stream

Entry = dict[str, Any]


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
class CallbackReply(ReplySink):
    """An answer the agent's own code takes (a live stream's decode: agents/live/streams.py)."""

    on_answer: Callable[[Entry], None]
    retries: bool = False

    def deliver(self, entry: Entry) -> None:
        self.on_answer(entry)


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
