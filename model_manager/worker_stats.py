"""What one model's worker has done, recorded once: `WorkerStats`, and its `Histogram`s.

The worker's threads write it as batches run; two readers take copies on their own threads:
the `stats` reply (recent percentiles, scheduler.ModelWorker.snapshot) and the Prometheus
exporter (lifetime counters and histograms, metrics.py). One record for both, so the two can
never disagree. The bucket bounds of the histograms live here too.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

# How many recent timings the percentiles in `stats()` are computed over.
STATS_WINDOW = 1000
# Bucket bounds of the lifetime histograms, which the Prometheus exporter serves.
# Seconds. Queue waits range from the fast path's few ms to a full queue's tens of seconds.
QUEUE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Seconds. One engine call: tens of ms for a short TTS sentence, seconds for a large STT batch.
COMPUTE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# Items. Every size up to 8 (the default max_batch_size) has a bucket of its own, so the
# histogram is exact for the default configuration; larger limits get coarser buckets.
BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 48, 64, 128)


@dataclass
class Histogram:
    """Observations counted in fixed buckets over a process's life (Prometheus style)."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)  # per bucket, then one for beyond the last
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def copy(self) -> Histogram:
        return Histogram(self.bounds, list(self.counts), self.total)


@dataclass
class WorkerStats:
    """The one record of what one model's worker has done: every batch, engine call,
    fallback and answered request. Written by its worker threads; `stats` (recent
    percentiles) and the Prometheus exporter (lifetime counters and histograms) both read
    it, on their own threads. Every access holds `lock`; readers take a `copy()`."""

    batches: int = 0
    requests: int = 0
    succeeded: int = 0
    #: Requests that ran as units (see units.py); each is one of `requests`.
    split_requests: int = 0
    batch_sizes: Counter[int] = field(default_factory=Counter)
    fire_reasons: Counter[str] = field(default_factory=Counter)
    fallbacks: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    queue_wait_s: deque[float] = field(default_factory=lambda: deque(maxlen=STATS_WINDOW))
    compute_s: deque[float] = field(default_factory=lambda: deque(maxlen=STATS_WINDOW))
    queue_wait_histogram: Histogram = field(default_factory=lambda: Histogram(QUEUE_BUCKETS))
    compute_histogram: Histogram = field(default_factory=lambda: Histogram(COMPUTE_BUCKETS))
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def batch_started(self, size: int, reason: str, waited_s: Sequence[float]) -> None:
        with self.lock:
            self.batches += 1
            self.batch_sizes[size] += 1
            self.fire_reasons[reason] += 1
            self.queue_wait_s.extend(waited_s)
            for seconds in waited_s:
                self.queue_wait_histogram.observe(seconds)

    def engine_ran(self, seconds: float) -> None:
        with self.lock:
            self.compute_s.append(seconds)
            self.compute_histogram.observe(seconds)

    def split_opened(self) -> None:
        with self.lock:
            self.split_requests += 1

    def fallback(self, reason: str) -> None:
        with self.lock:
            self.fallbacks[reason] += 1

    def request_finished(self, error_code: str | None, refused: bool = False) -> None:
        """One request answered; `refused`: turned away before it was queued (not counted
        among `requests`, which are the ones that reached the queue)."""
        with self.lock:
            if error_code is None:
                self.succeeded += 1
            else:
                self.errors[error_code] += 1
            if not refused:
                self.requests += 1

    def copy(self) -> WorkerStats:
        """A consistent snapshot that no worker thread writes to."""
        with self.lock:
            return WorkerStats(
                self.batches, self.requests, self.succeeded, self.split_requests, Counter(self.batch_sizes),
                Counter(self.fire_reasons), Counter(self.fallbacks), Counter(self.errors),
                deque(self.queue_wait_s, maxlen=STATS_WINDOW), deque(self.compute_s, maxlen=STATS_WINDOW),
                self.queue_wait_histogram.copy(), self.compute_histogram.copy(),
            )
