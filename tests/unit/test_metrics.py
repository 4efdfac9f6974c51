"""Metrics and monitoring pieces that need no bus: the Prometheus metrics fed by a real
ModelWorker, GPU memory readings, the monitor's throughput meter, and the new config keys."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from test_scheduler import EchoEngine

from agents.monitor import Monitor, MonitorServer, ThroughputMeter
from model_manager import memory
from model_manager.batcher import BatchPolicy
from model_manager.config import ConfigError, load_config
from model_manager.errors import BusError
from model_manager.jobs import Job
from model_manager.metrics import BusMetrics
from model_manager.scheduler import ModelWorker
from model_manager.worker_stats import WorkerStats


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(metrics: BusMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return samples(generate_latest(metrics.registry).decode())


def test_a_worker_feeds_the_metrics_of_its_batches_and_failures():
    levels = {"models": [], "memory": {"cpu": {"process_rss_bytes": 123}}}
    done = threading.Semaphore(0)
    policy = BatchPolicy(max_batch_size=4, min_batch_size=4, max_queue_size=4)
    worker = ModelWorker(
        EchoEngine(poison=2),
        policy,
        lambda job, outcome: done.release(),
        dynamic_batching=False,
    )
    metrics = BusMetrics(read_stats=lambda: levels, read_records=lambda: {"echo": worker.stats.copy()})
    assert scrape(metrics)[("voicebus_request_success_total", (("model", "echo"),))] == 0
    for x in range(4):  # queued before the worker starts, so the four make one full batch
        worker.submit(Job(job_id=str(x), model="echo", request={"x": x}, key="k", deadline=1e12))
    with pytest.raises(BusError) as refused:
        worker.submit(Job(job_id="5", model="echo", request={"x": 5}, key="k", deadline=1e12))
    assert refused.value.code == "overloaded"
    worker.start()
    for _ in range(4):
        assert done.acquire(timeout=10)
    worker.stop(5)

    got = scrape(metrics)
    model = (("model", "echo"),)
    assert got[("voicebus_request_success_total", model)] == 3
    assert got[("voicebus_request_failure_total", (("model", "echo"), ("reason", "inference_failed")))] == 1
    assert got[("voicebus_request_failure_total", (("model", "echo"), ("reason", "overloaded")))] == 1
    assert got[("voicebus_batches_total", (("model", "echo"), ("reason", "full")))] == 1
    assert got[("voicebus_batch_fallbacks_total", (("model", "echo"), ("reason", "one_by_one")))] == 1
    assert got[("voicebus_batch_size_count", model)] == 1
    assert got[("voicebus_batch_size_sum", model)] == 4
    assert got[("voicebus_batch_size_bucket", (("le", "3.0"), ("model", "echo")))] == 0
    assert got[("voicebus_batch_size_bucket", (("le", "4.0"), ("model", "echo")))] == 1
    assert got[("voicebus_queue_duration_seconds_count", model)] == 4
    assert got[("voicebus_compute_duration_seconds_count", model)] == 3  # the successful calls
    assert got[("voicebus_cpu_memory_rss_bytes", ())] == 123
    # `stats` counts the same failures as the metrics, refusals included.
    assert worker.stats.errors == {"inference_failed": 1, "overloaded": 1}


def test_levels_are_read_at_scrape_time_and_each_instance_has_its_own_registry():
    levels = {
        "models": [{"model": "m", "queue_depth": 5, "workers": {"total": 2, "ready": 2, "busy": 1}}],
        "memory": {"cuda:0": {"process_rss_bytes": 10, "gpu_used_bytes": 300, "gpu_total_bytes": 1000}},
    }
    record = WorkerStats()
    record.request_finished(None)
    first = BusMetrics(read_stats=lambda: levels, read_records=lambda: {"m": record})
    second = BusMetrics(read_stats=lambda: {"models": []})
    got = scrape(first)
    assert got[("voicebus_pending_requests", (("model", "m"),))] == 5
    assert got[("voicebus_workers", (("model", "m"),))] == 2
    assert got[("voicebus_workers_busy", (("model", "m"),))] == 1
    assert got[("voicebus_gpu_memory_used_bytes", (("device", "cuda:0"),))] == 300
    assert got[("voicebus_gpu_memory_total_bytes", (("device", "cuda:0"),))] == 1000
    levels["models"][0]["queue_depth"] = 0
    assert scrape(first)[("voicebus_pending_requests", (("model", "m"),))] == 0
    assert ("voicebus_request_success_total", (("model", "m"),)) not in scrape(second)


def test_the_exporter_serves_over_http_and_frees_its_port():
    record = WorkerStats()
    record.request_finished("timeout")
    metrics = BusMetrics(read_stats=lambda: {"models": []}, read_records=lambda: {"m": record})
    exporter = metrics.serve("127.0.0.1", 0)
    port = exporter._server.server_address[1]
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        exporter.close()
    assert samples(body)[("voicebus_request_failure_total", (("model", "m"), ("reason", "timeout")))] == 1


def test_cuda_memory_reading_reports_what_the_driver_counts_as_used(monkeypatch):
    import torch

    gib = 1 << 30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (30 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda *a: 6 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a: 4 * gib)
    reading = memory.read_memory("cuda")
    assert reading.gpu_used_bytes == 50 * gib  # what the device has in use, for the dashboards
    assert reading.free_bytes == 32 * gib  # what batches may use: plus torch's unused cache
    assert reading.total_bytes == 80 * gib
    assert memory.read_memory("cpu").gpu_used_bytes is None


def test_throughput_is_the_request_rate_over_the_window_and_restarts_with_the_counter():
    meter = ThroughputMeter(window_s=10)
    assert meter.rate("m", 0.0, 0) == 0.0
    assert meter.rate("m", 1.0, 5) == 5.0
    assert meter.rate("m", 2.0, 5) == 2.5
    for t in range(3, 30):
        rate = meter.rate("m", float(t), 5 + 2 * (t - 2))
    assert rate == pytest.approx(2.0)  # the early burst has left the window
    assert meter.rate("m", 30.0, 3) == 0.0  # a restarted model manager counts from zero
    assert meter.rate("m", 31.0, 5) == 2.0
    assert meter.rate("m", 100.0, 500) == 0.0  # no rate across a gap nobody watched


class CannedAgents:
    """Answers `health` and `stats` like agents whose model manager is down (stt), or that
    do not answer at all (tts)."""

    def request(self, address: str, message: dict, timeout_s: float | None = None) -> dict:
        if address == "tts":
            return {"status": "error", "error": {"code": "timeout", "message": "no reply"}}
        if message["action"] == "health":
            models = [{"name": "m", "task": "stt", "ready": False}]
            return {
                "status": "success",
                "live": True,
                "ready": False,
                "model_manager": "down",
                "models": models,
            }
        return {"status": "success", "requests_by_action": {"health": 1}, "models": [], "in_flight": 0}


def test_the_monitor_serves_its_page_and_the_agents_view_of_the_bus():
    server = MonitorServer(Monitor({"stt": "stt", "tts": "tts"}, client=CannedAgents()), port=0)  # type: ignore[arg-type]
    try:
        page = urllib.request.urlopen(server.url, timeout=5).read().decode()
        api = json.loads(urllib.request.urlopen(server.url + "api/stats", timeout=5).read())
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(server.url + "nothing", timeout=5)
    finally:
        server.close()
    assert "<title>voicebus monitor</title>" in page and "/api/stats" in page
    assert "http" not in page.replace("http://www.w3.org/2000/svg", "")  # nothing to fetch from afar
    stt, tts = api["services"]
    assert (stt["live"], stt["ready"], stt["model_manager"]) == (True, False, "down")
    assert stt["models"] == [{"model": "m", "task": "stt", "ready": False}]  # known, though down
    assert (tts["live"], tts["model_manager"], tts["models"]) == (False, "unknown", [])
    assert tts["error"] == "timeout: no reply"
    assert missing.value.code == 404


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"VOICEBUS__ENDPOINTS__METRICS_PORT": "5800"}, "endpoints"),  # the STT port
        ({"VOICEBUS__ENDPOINTS__MONITOR_PORT": "70000"}, "endpoints.monitor_port"),
        ({"VOICEBUS__LOGGING__LEVEL": "loud"}, "logging.level"),
    ],
)
def test_bad_metrics_monitor_or_logging_settings_name_their_key(env, key):
    with pytest.raises(ConfigError, match=f"^{key}:"):
        load_config(environ=env)


def test_metrics_and_monitor_ports_default_on_and_zero_turns_them_off():
    config = load_config(environ={})
    assert (config.endpoints.metrics_port, config.endpoints.monitor_port) == (5890, 5891)
    off = {"VOICEBUS__ENDPOINTS__METRICS_PORT": "0", "VOICEBUS__ENDPOINTS__MONITOR_PORT": "0"}
    config = load_config(environ=off)
    assert (config.endpoints.metrics_port, config.endpoints.monitor_port) == (0, 0)
