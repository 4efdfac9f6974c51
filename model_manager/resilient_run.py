"""One batch on the engine, so that every request in it gets an outcome of its own.

Contract
--------
- `run(requests)` returns a `BatchOutcomes`: one outcome per request, in order (the engine's
  result, or the `BusError` that request fails with), and whether it needed a fallback. It
  never raises: an engine bug or a bad item must not take the worker thread down.
- A batch that fails with out_of_memory is split in halves and each half run again, down
  to single items; a single item's out_of_memory is its outcome.
- A batch that fails any other way is run again one item at a time, so one bad item fails
  alone (with its own BusError, or inference_failed and the cause) and the rest succeed.
- Every fallback (`oom_split`, `one_by_one`) is counted in the worker's `WorkerStats` and
  logged. Only a run without one (`clean`) measures what its batch size costs.
- Each engine call's time goes to the stats, and the `MemoryBudget` measures it (a failed
  call ends the measurement without an observation). An engine that returns a different
  number of results than it got requests has failed the batch.
- No placeholder output is ever made up for a failed item.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from model_manager.engines.base import Engine, Result
from model_manager.errors import INFERENCE_FAILED, OUT_OF_MEMORY, BusError
from model_manager.jobs import Outcome
from model_manager.memory import MemoryBudget
from model_manager.worker_stats import WorkerStats

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchOutcomes:
    """What a batch came to: one outcome per request, in order; `clean`: no fallback ran."""

    outcomes: list[Outcome]
    clean: bool


class ResilientRun:
    """Runs batches of one engine with the fallbacks of the module docstring; safe to call
    from several worker threads at once."""

    def __init__(self, engine: Engine, memory: MemoryBudget, stats: WorkerStats) -> None:
        self.engine = engine
        self.memory = memory
        self.stats = stats

    def run(self, requests: Sequence[Any]) -> BatchOutcomes:
        fallbacks: list[str] = []  # this run's own: other threads' runs must not count
        outcomes = self._run(list(requests), fallbacks)
        return BatchOutcomes(outcomes, clean=not fallbacks)

    def _run(self, requests: list[Any], fallbacks: list[str]) -> list[Outcome]:
        try:
            return list(self._run_engine(requests))
        except BusError as exc:
            if exc.code == OUT_OF_MEMORY and len(requests) > 1:
                self._note_fallback(fallbacks, "oom_split", len(requests), "out_of_memory")
                half = len(requests) // 2
                return self._run(requests[:half], fallbacks) + self._run(requests[half:], fallbacks)
            if len(requests) == 1:
                return [exc]
            failure: Exception = exc
        except Exception as exc:  # engine bugs and bad items must not take the worker down
            if len(requests) == 1:
                log.exception("inference failed model=%s", self.engine.name)
                return [BusError(INFERENCE_FAILED, f"{type(exc).__name__}: {exc}")]
            failure = exc
        self._note_fallback(fallbacks, "one_by_one", len(requests),
                            repr(f"{type(failure).__name__}: {failure}"))
        return [self._run([request], fallbacks)[0] for request in requests]

    def _note_fallback(self, fallbacks: list[str], reason: str, size: int, error: str) -> None:
        """Count, export and log one fallback, the same way for every reason."""
        fallbacks.append(reason)
        self.stats.fallback(reason)
        log.warning(
            "batch fallback model=%s reason=%s size=%d error=%s", self.engine.name, reason, size, error
        )

    def _run_engine(self, requests: list[Any]) -> list[Result]:
        started = time.perf_counter()
        self.memory.begin()
        measured = 0  # a failed call is no observation, but must still end the measurement
        try:
            results = self.engine.run_batch(requests)
            measured = len(requests)
        finally:
            self.memory.end(measured)
        elapsed = time.perf_counter() - started
        self.stats.engine_ran(elapsed)
        if len(results) != len(requests):
            raise RuntimeError(f"engine returned {len(results)} results for {len(requests)} requests")
        return results
