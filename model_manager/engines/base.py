"""The one small interface every inference engine implements.

The model manager knows nothing about Whisper or Kokoro. It asks an engine three things:
which requests may share a forward pass (`batch_key`), how to check and normalise a request
before it is queued (`prepare`), and to run a batch (`run_batch`). STT and TTS engines are
interchangeable behind it, so one batcher and one agent serve both.

Requests and results are plain dicts so that they map one-to-one onto the wire protocol:

- STT request: {"audio": float32 ndarray at 16 kHz, "language": str | None, "task": str,
  "beam_size": int}; result: {"text": str, "language": str}.
- TTS request: {"text": str, "voice": str, "speed": float}; result:
  {"audio": float32 ndarray, "sample_rate": int}.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

Task = Literal["stt", "tts"]
Request = Mapping[str, Any]
Result = dict[str, Any]


class Engine(ABC):
    """A loaded model that can run a batch of compatible requests in one call.

    Contract:
    - `prepare` runs on every request before it is queued. It validates (raising
      `errors.BusError` with a client-fixable code) and returns the normalised request.
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

    def prepare(self, request: Request) -> Request:
        return request

    @abstractmethod
    def batch_key(self, request: Request) -> Hashable:
        """Requests with equal keys may share one forward pass."""

    @abstractmethod
    def run_batch(self, requests: Sequence[Request]) -> list[Result]:
        """Run every request in one forward pass where the engine can; one result each, in order."""

    def cost(self, request: Request) -> float:
        """Work units of one request (audio seconds for STT, phoneme tokens for TTS)."""
        return 1.0

    def bucket(self, request: Request) -> Hashable:
        """Which kind of request this is for batch-size learning: requests of one bucket cost
        alike per unit (Whisper: one window length). One bucket (None) unless overridden."""
        return None

    def warmup_requests(self, count: int) -> list[Request]:
        """Synthetic requests for measuring batch sizes before serving (see scheduler.warm_up)."""
        if self.task == "stt":
            # Five seconds of silence: Whisper pads every clip to 30 s, so the encoder cost,
            # which dominates, is that of real speech.
            request: dict[str, Any] = {"audio": np.zeros(5 * 16_000, dtype=np.float32)}
        else:
            request = {"text": "Warming up the voice."}
        return [self.prepare(dict(request)) for _ in range(count)]

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
