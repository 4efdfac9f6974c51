"""Prometheus metrics of one model manager process, served over HTTP for scraping.

Nothing is counted here: every number is read at scrape time from what the bus already
records, so `stats` and the metrics can never disagree.
- Events (requests answered, batches fired, engine calls, fallbacks) come from each model's
  `worker_stats.WorkerStats`, the one record of its batches: lifetime counters, and
  histograms over fixed buckets.
- Levels (queue depth, workers, memory) come from the model manager's own `stats()`.

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
| voicebus_live_streams_open | gauge | – |
| voicebus_live_events_total | counter | type (speech_started, partial, speech_ended, final, error) |
| voicebus_live_decodes_total | counter | kind (partial, final) |
| voicebus_live_decodes_skipped_total | counter | – |
| voicebus_live_finals_retried_total | counter | – (final decodes sent again without context) |
| voicebus_live_partials_set_aside_total | counter | – (a loop, or no reading of the context) |
| voicebus_live_latency_seconds | gauge | kind (partial, final), quantile (0.5, 0.95, 0.99; last 1000) |
| voicebus_live_decode_batch_size | histogram | – (the batch each stream decode ran in) |

The live-stream figures are the STT agent's (agents/live/streams.py `stats`); the agent
serves them on its own exporter (agents/metrics.py), with the demand the autoscaler reads.
The same HTTP server answers the orchestrator's probes: GET /livez (200 while the model
manager's socket loop comes round) and GET /readyz (200 once its models are loaded and an
agent took its READY, until it drains).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from model_manager.worker_stats import BATCH_SIZE_BUCKETS, Histogram, WorkerStats

log = logging.getLogger(__name__)

StatsReader = Callable[[], dict[str, Any]]
#: Each model's `WorkerStats`, copied (see `WorkerStats.copy`), by model name.
RecordsReader = Callable[[], Mapping[str, WorkerStats]]


class BusMetrics:
    """The metrics of one model manager.

    `read_records` returns every model's WorkerStats copy; `read_stats` the model manager's
    `stats()` map (`models`, `memory`). Both are called on the exporter's thread at every
    scrape, so they must be safe to call from there.
    """

    def __init__(self, read_stats: StatsReader, read_records: RecordsReader = dict) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_EventsCollector(read_records))
        self.registry.register(_LevelsCollector(read_stats))

    def serve(self, host: str, port: int, ready: Callable[[], bool] | None = None,
              alive: Callable[[], bool] | None = None) -> Exporter:
        """Serve `/metrics` (and the probes) on host:port in a daemon thread. Raises OSError if
        the port is taken."""
        return serve_registry(self.registry, host, port, ready, alive)


def serve_registry(registry: CollectorRegistry, host: str, port: int, ready: Callable[[], bool] | None = None,
                   alive: Callable[[], bool] | None = None) -> Exporter:
    """Serve `registry` at /metrics, and the probes /livez (`alive`) and /readyz (`ready`;
    each 200 when its check holds or is not given, else 503), in a daemon thread."""
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "")
        if path in ("/livez", "/readyz"):
            check = alive if path == "/livez" else ready
            ok = check is None or check()
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"ok\n" if ok else b"not ready\n"]
        return metrics_app(environ, start_response)

    server = make_server(host, port, app, ThreadingWSGIServer, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    log.info("metrics exporter listening on http://%s:%d/metrics", host, port)
    return Exporter(server, thread)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Scrapes and probes come every few seconds: not worth a log line each."""


class Exporter:
    """A running metrics HTTP server; `close()` stops it and frees the port."""

    def __init__(self, server: Any, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)


class _EventsCollector(Collector):
    """Counters and histograms read from each model's WorkerStats at scrape time."""

    def __init__(self, read_records: RecordsReader) -> None:
        self._read_records = read_records

    def collect(self) -> Iterator[Metric]:
        success = CounterMetricFamily(
            "voicebus_request_success", "Requests answered with a result, by model.", labels=["model"])
        failure = CounterMetricFamily(
            "voicebus_request_failure", "Requests answered with an error, by model and error code.",
            labels=["model", "reason"])
        batches = CounterMetricFamily(
            "voicebus_batches", "Batches run, by model and by what made them fire.",
            labels=["model", "reason"])
        fallbacks = CounterMetricFamily(
            "voicebus_batch_fallbacks", "Failed batches retried in parts, by model and how.",
            labels=["model", "reason"])
        queue = HistogramMetricFamily(
            "voicebus_queue_duration_seconds", "Time a request waited in the queue before its batch fired.",
            labels=["model"])
        compute = HistogramMetricFamily(
            "voicebus_compute_duration_seconds",
            "Time of one engine call (a batch, or part of one after a fallback).", labels=["model"])
        sizes = HistogramMetricFamily("voicebus_batch_size", "Requests per batch.", labels=["model"])
        for model, record in self._read_records().items():
            success.add_metric([model], record.succeeded)
            for code, n in record.errors.items():
                failure.add_metric([model, code], n)
            for reason, n in record.fire_reasons.items():
                batches.add_metric([model, reason], n)
            for reason, n in record.fallbacks.items():
                fallbacks.add_metric([model, reason], n)
            queue.add_metric([model], *_buckets(record.queue_wait_histogram))
            compute.add_metric([model], *_buckets(record.compute_histogram))
            by_size = Histogram(BATCH_SIZE_BUCKETS)
            for size, n in record.batch_sizes.items():
                for _ in range(n):
                    by_size.observe(size)
            sizes.add_metric([model], *_buckets(by_size))
        yield from (success, failure, batches, fallbacks, queue, compute, sizes)


def _buckets(histogram: Histogram) -> tuple[list[tuple[str, float]], float]:
    """Prometheus's cumulative buckets ("le" bound, count) and the sum of a Histogram."""
    out, running = [], 0
    for bound, count in zip((*histogram.bounds, float("inf")), histogram.counts, strict=True):
        running += count
        out.append(("+Inf" if bound == float("inf") else str(float(bound)), running))
    return out, histogram.total


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


#: (metric, the key in the agents' live stats, help) of the live counters without labels.
_LIVE_COUNTERS = (
    ("voicebus_live_decodes_skipped", "decodes_skipped",
     "Partial decodes skipped because the stream's previous one was not back."),
    ("voicebus_live_finals_retried", "finals_retried_alone",
     "Final decodes with context sent again without it: no words of their own, no reading of "
     "the context, or a decoder loop."),
    ("voicebus_live_partials_set_aside", "partials_set_aside",
     "Partial decodes set aside: a decoder loop, or no reading of the context."),
)


def live_metrics(agents: list[dict[str, Any]]) -> Iterator[Metric]:
    open_streams = GaugeMetricFamily("voicebus_live_streams_open", "Live STT streams open.")
    open_streams.add_metric([], sum(a.get("open_streams", 0) for a in agents))
    events = CounterMetricFamily("voicebus_live_events", "Live STT events sent, by type.", labels=["type"])
    decodes = CounterMetricFamily("voicebus_live_decodes", "Live STT decodes sent, by kind.", labels=["kind"])
    for family, key in ((events, "events"), (decodes, "decodes")):
        totals: dict[str, int] = {}
        for agent in agents:
            for label, n in (agent.get(key) or {}).items():
                totals[label] = totals.get(label, 0) + n
        for label, n in sorted(totals.items()):
            family.add_metric([label], n)
    counters = []
    for name, key, description in _LIVE_COUNTERS:
        counter = CounterMetricFamily(name, description)
        counter.add_metric([], sum(a.get(key, 0) for a in agents))
        counters.append(counter)
    latency = GaugeMetricFamily(
        "voicebus_live_latency_seconds",
        "From the audio's arrival to its partial or final event (the worst agent's), over the last 1000.",
        labels=["kind", "quantile"])
    for kind in ("partial", "final"):
        for q in ("50", "95", "99"):
            readings = [a.get(f"{kind}_latency_ms") or {} for a in agents]
            values = [r[f"p{q}"] for r in readings if f"p{q}" in r]
            if values:
                latency.add_metric([kind, str(int(q) / 100)], max(values) / 1000.0)
    by_size = Histogram(BATCH_SIZE_BUCKETS)
    for agent in agents:
        for size, n in (agent.get("decode_batch_size_histogram") or {}).items():
            for _ in range(n):
                by_size.observe(int(size))
    sizes = HistogramMetricFamily("voicebus_live_decode_batch_size",
                                  "The batch size each live STT decode ran in.", labels=[])
    sizes.add_metric([], *_buckets(by_size))
    yield from (open_streams, events, decodes, *counters, latency, sizes)
