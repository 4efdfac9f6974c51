"""Prometheus metrics of one model manager process, served over HTTP for scraping.

Two kinds of numbers, kept apart on purpose:
- Events (requests answered, batches fired, engine calls, fallbacks) are counted as they
  happen: `BusMetrics` is the scheduler's `WorkerObserver`, so counters and histograms are
  exact over the process's whole life, not over the window `stats` keeps.
- Levels (queue depth, workers, memory) are read at scrape time from the model manager's
  own `stats()`, so a scrape never shows a stale level and nothing has to keep them current.

Every `BusMetrics` has a `CollectorRegistry` of its own (never the library's global one),
so one process, a test for instance, can hold several. Names follow the Triton/Ray style:

| name | type | labels |
|---|---|---|
| voicebus_request_success_total | counter | model |
| voicebus_request_failure_total | counter | model, reason (an error code) |
| voicebus_batches_total | counter | model, reason (full, min_reached, timeout, fast_path, unbatched) |
| voicebus_batch_fallbacks_total | counter | model, reason (oom_split, one_by_one) |
| voicebus_queue_duration_seconds | histogram | model |
| voicebus_compute_duration_seconds | histogram | model (one engine call) |
| voicebus_batch_size | histogram | model |
| voicebus_pending_requests | gauge | model |
| voicebus_workers, voicebus_workers_ready, voicebus_workers_busy | gauge | model |
| voicebus_cpu_memory_rss_bytes | gauge | – |
| voicebus_gpu_memory_used_bytes, voicebus_gpu_memory_total_bytes | gauge | device (CUDA only) |
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from model_manager.scheduler import WorkerObserver

log = logging.getLogger(__name__)

# Seconds. Queue waits range from the fast path's few ms to a full queue's tens of seconds.
QUEUE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Seconds. One engine call: tens of ms for a short TTS sentence, seconds for a large STT batch.
COMPUTE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# Items. Every size up to 8 (the default max_batch_size) has a bucket of its own, so the
# histogram is exact for the default configuration; larger limits get coarser buckets.
BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 48, 64, 128)

StatsReader = Callable[[], dict[str, Any]]


class BusMetrics(WorkerObserver):
    """The metrics of one model manager. Pass it to every `ModelWorker` as its observer.

    `read_stats` returns the model manager's `stats()` map (`models`, `memory`); it is
    called on the exporter's thread at every scrape, so it must be safe to call from there.
    """

    def __init__(self, read_stats: StatsReader) -> None:
        self.registry = CollectorRegistry()
        self.success = Counter(
            "voicebus_request_success_total",
            "Requests answered with a result, by model.",
            ["model"],
            registry=self.registry,
        )
        self.failure = Counter(
            "voicebus_request_failure_total",
            "Requests answered with an error, by model and error code.",
            ["model", "reason"],
            registry=self.registry,
        )
        self.batches = Counter(
            "voicebus_batches_total",
            "Batches run, by model and by what made them fire.",
            ["model", "reason"],
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "voicebus_batch_fallbacks_total",
            "Failed batches retried in parts, by model and how.",
            ["model", "reason"],
            registry=self.registry,
        )
        self.queue_duration = Histogram(
            "voicebus_queue_duration_seconds",
            "Time a request waited in the queue before its batch fired.",
            ["model"],
            buckets=QUEUE_BUCKETS,
            registry=self.registry,
        )
        self.compute_duration = Histogram(
            "voicebus_compute_duration_seconds",
            "Time of one engine call (a batch, or part of one after a fallback).",
            ["model"],
            buckets=COMPUTE_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "voicebus_batch_size",
            "Requests per batch.",
            ["model"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_LevelsCollector(read_stats))

    def add_model(self, model: str) -> None:
        """Export the model's series at zero before its first request, so rates and alerts
        see a model that has served nothing yet instead of a missing series."""
        for metric in (self.success, self.queue_duration, self.compute_duration, self.batch_size):
            metric.labels(model)

    # --- WorkerObserver: called on worker threads (prometheus_client is thread-safe) ---

    def batch_started(self, model: str, size: int, reason: str, waited_s: Sequence[float]) -> None:
        self.batches.labels(model, reason).inc()
        self.batch_size.labels(model).observe(size)
        queue = self.queue_duration.labels(model)
        for seconds in waited_s:
            queue.observe(seconds)

    def engine_ran(self, model: str, seconds: float) -> None:
        self.compute_duration.labels(model).observe(seconds)

    def fallback(self, model: str, reason: str) -> None:
        self.fallbacks.labels(model, reason).inc()

    def request_finished(self, model: str, error_code: str | None) -> None:
        if error_code is None:
            self.success.labels(model).inc()
        else:
            self.failure.labels(model, error_code).inc()

    # --- the exporter ---------------------------------------------------------------------

    def serve(self, host: str, port: int) -> Exporter:
        """Serve `/metrics` on host:port in a daemon thread. Raises OSError if the port is taken."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        log.info("metrics exporter listening on http://%s:%d/metrics", host, port)
        return Exporter(server, thread)


class Exporter:
    """A running metrics HTTP server; `close()` stops it and frees the port."""

    def __init__(self, server: Any, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)


class _LevelsCollector(Collector):
    """Gauges read from `stats()` at scrape time."""

    def __init__(self, read_stats: StatsReader) -> None:
        self._read_stats = read_stats

    def collect(self) -> Iterator[Metric]:
        stats = self._read_stats()
        pending = GaugeMetricFamily(
            "voicebus_pending_requests", "Requests queued for a model, not yet running.", labels=["model"]
        )
        workers = GaugeMetricFamily("voicebus_workers", "Worker threads per model.", labels=["model"])
        ready = GaugeMetricFamily(
            "voicebus_workers_ready", "Worker threads alive and taking work.", labels=["model"]
        )
        busy = GaugeMetricFamily(
            "voicebus_workers_busy", "Worker threads running a batch right now.", labels=["model"]
        )
        for model in stats.get("models", []):
            name = [model["model"]]
            counts = model.get("workers", {})
            pending.add_metric(name, model.get("queue_depth", 0))
            workers.add_metric(name, counts.get("total", 0))
            ready.add_metric(name, counts.get("ready", 0))
            busy.add_metric(name, counts.get("busy", 0))
        yield from (pending, workers, ready, busy)

        memory: dict[str, dict[str, int]] = stats.get("memory") or {}
        rss = next((m["process_rss_bytes"] for m in memory.values() if "process_rss_bytes" in m), None)
        if rss is not None:
            yield GaugeMetricFamily(
                "voicebus_cpu_memory_rss_bytes", "Resident memory of the model manager process.", value=rss
            )
        gpu_used = GaugeMetricFamily(
            "voicebus_gpu_memory_used_bytes", "GPU memory in use (all processes).", labels=["device"]
        )
        gpu_total = GaugeMetricFamily("voicebus_gpu_memory_total_bytes", "GPU memory.", labels=["device"])
        for device, reading in memory.items():
            if "gpu_used_bytes" in reading:
                gpu_used.add_metric([device], reading["gpu_used_bytes"])
                gpu_total.add_metric([device], reading["gpu_total_bytes"])
        yield from (gpu_used, gpu_total)
