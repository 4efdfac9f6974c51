"""The one small interface every inference engine implements.

The model manager knows nothing about Whisper or Kokoro. It asks an engine four things: how
to check a client's item and turn it into the engine's own request (`prepare`, the one
validation of its family), which requests may share a forward pass (`batch_key`), what one
costs (`cost`), and to run a batch (`run_batch`). Optionally, how a long request splits into
units that are scheduled one by one (`split`) and joined again (`join`). STT and TTS engines
are interchangeable behind it, so one batcher and one agent serve both.

Each engine family has its own typed request `R` (a dataclass, e.g. Kokoro's
`SpeechRequest`), made only by its `prepare`; the bus (scheduler, agents) treats requests as
opaque and never reads their fields. Results are typed records too (Whisper's `Transcript`,
Kokoro's `Speech`); the bus only asks a result for its wire form (`Result.to_wire`), which
the model manager sends to the agents (docs/protocol.md):

- STT: {"text", "language", "truncated"}, plus "segments" and "words" when asked for.
- TTS: {"audio": float32 ndarray, "sample_rate": int}.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Generic, Literal, Protocol, TypeVar

import numpy as np

Task = Literal["stt", "tts"]
#: The fields of one client item, as they reach the engine (see docs/protocol.md §6).
Fields = Mapping[str, Any]
#: Kept for engines whose requests are still field maps.
Request = Mapping[str, Any]
R = TypeVar("R")


class Result(Protocol):
    """What `Engine.run_batch` returns for one request: a typed record of the engine family."""

    def to_wire(self) -> dict[str, Any]:
        """The result's fields as the model manager sends them (docs/protocol.md)."""
        ...


class Engine(ABC, Generic[R]):
    """A loaded model that can run a batch of compatible requests in one call.

    Contract:
    - `prepare(fields)` runs once on every item before it is queued. It validates (raising
      `errors.BusError` with a client-fixable code) and returns the family's request `R`.
    - `batch_key` is computed from request *content* (never object identity): two requests
      with equal keys can go into one `run_batch` call.
    - `run_batch` returns exactly one result per request, in order, or raises. A raise fails
      the batch as a whole; the model manager then retries the items one at a time so that
      a bad item fails alone. It never returns placeholder output (silence, empty text) for
      an item that failed.
    """

    task: Task
    #: Unique name clients use in `model_pref`, e.g. "whisper-tiny.en".
    name: str
    #: Parameter count, used to rank models for model_pref "fast" (smallest) / "quality" (largest).
    num_parameters: int
    #: "cpu" or "cuda", after resolving "auto".
    device: str
    #: How many requests one forward pass can hold; None: as many as fit. An engine that runs
    #: its requests one after another (1) gains nothing from a larger batch, whose first
    #: requests would only wait for its last: dynamic batching keeps its batches to this.
    batch_width: int | None = None

    def prepare(self, fields: Fields) -> R:
        return fields  # type: ignore[return-value]

    @abstractmethod
    def batch_key(self, request: R) -> Hashable:
        """Requests with equal keys may share one forward pass."""

    @abstractmethod
    def run_batch(self, requests: Sequence[R]) -> list[Result]:
        """Run every request in one forward pass where the engine can; one result each, in order."""

    def cost(self, request: R) -> float:
        """Work units of one request (audio seconds for STT, phoneme tokens for TTS)."""
        return 1.0

    def split(self, request: R) -> Sequence[Any]:
        """The units a long request runs as, in order (Whisper: its 30 s windows; Kokoro: its
        text pieces), so that the scheduler can queue and batch each with other requests and
        let short requests run between them. One unit (the default: the request itself) means
        the request runs whole.

        Contract: each unit is a request `run_batch` accepts, with the request's `batch_key`
        and `bucket`; `join(request, results)` of the units' results, in order, is what
        `run_batch([request])` returns. Cheap: it runs when the job is queued (a `prepare` can
        do the expensive planning and cache it)."""
        return [request]

    def join(self, request: R, results: Sequence[Result]) -> Result:
        """The request's result from its units' results, in `split`'s order."""
        if len(results) != 1:
            raise ValueError(f"{self.name}: {len(results)} unit results for a request that does not split")
        return results[0]

    def bucket(self, request: R) -> Hashable:
        """Which kind of request this is for batch-size learning: requests of one bucket cost
        alike per unit (Whisper: one window length). One bucket (None) unless overridden."""
        return None

    def warmup_requests(self, count: int) -> list[R]:
        """Synthetic requests for measuring batch sizes before serving (see scheduler.warm_up)."""
        if self.task == "stt":
            # Five seconds of silence: Whisper pads every clip to 30 s, so the encoder cost,
            # which dominates, is that of real speech.
            fields: dict[str, Any] = {"audio": np.zeros(5 * 16_000, dtype=np.float32)}
        else:
            fields = {"text": "Warming up the voice."}
        return [self.prepare(dict(fields)) for _ in range(count)]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "task": self.task,
            "device": self.device,
            "num_parameters": self.num_parameters,
        }


def resolve_device(device: str) -> str:
    """Turn "auto" into "cuda" when a GPU is visible, else "cpu"."""
    if device != "auto":
        return device
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return "cpu"
