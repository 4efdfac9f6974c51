"""A model's queued work and its answers, as records: `Job` in, `Timed` (or a `BusError`) out.

The model manager makes a `Job` of each prepared "infer"; its model's worker (scheduler.py)
queues, batches and runs it, and hands back exactly one `Outcome` for it: the engine's
result with its `Timing`, or the error the request failed with.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass
from typing import Any

from model_manager.engines.base import Result
from model_manager.errors import BusError
from model_manager.units import UnitRef

Clock = Callable[[], float]


@dataclass(frozen=True)
class Timing:
    """Where one request's time went: its reply's `timing` (docs/protocol.md)."""

    prepare_ms: float
    queue_ms: float
    compute_ms: float
    batch_size: int

    @classmethod
    def of(cls, prepare_s: float, queue_s: float, compute_s: float, batch_size: int) -> Timing:
        """From seconds, in milliseconds to the microsecond, as on the wire."""
        return cls(prepare_ms=round(prepare_s * 1000, 3), queue_ms=round(queue_s * 1000, 3),
                   compute_ms=round(compute_s * 1000, 3), batch_size=batch_size)


@dataclass(frozen=True)
class Timed:
    """An engine's result for one job, with its `Timing`: what `on_done` gets on success."""

    result: Result
    timing: Timing

    def to_wire(self) -> dict[str, Any]:
        return {**self.result.to_wire(), "timing": asdict(self.timing)}


#: What a job ends with: a result (to `on_done`, a `Timed`), or the error it failed with.
Outcome = Result | BusError


@dataclass
class Job:
    job_id: str
    model: str
    request: Any  # the engine's own request type: opaque here
    key: Hashable
    deadline: float  # monotonic seconds
    priority: int = 0
    #: By when the client would like the answer (monotonic seconds; None: the deadline). Soft:
    #: it sizes batches (no batch longer than the earliest target allows), it expires nothing.
    target: float | None = None
    #: Opaque to the worker: where the answer goes (the model manager stores the agent identity).
    reply_to: Any = None
    cost: float = 1.0
    #: Set by the worker from `engine.bucket`: which cost model learns from this job.
    bucket: Hashable = None
    #: Seconds the engine's `prepare` took on it (checks, Whisper's speech detection).
    prepare_s: float = 0.0
    #: Set by the worker on the jobs it makes for the units of a split request: which unit.
    #: A unit job shares its request's job_id, key, deadline, priority and target.
    unit: UnitRef | None = None

    def due_by(self) -> float:
        return self.deadline if self.target is None else min(self.target, self.deadline)
