"""Seeing what the bus does, end to end on real models: the Prometheus exporter after known
traffic, the monitoring page in a real (headless) browser, and `health` when the model
manager dies and comes back."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path

import psutil
import pytest
from conftest import NO_WARMUP, Bus, start_bus, stop_bus
from prometheus_client.parser import text_string_to_metric_families
from speech import SENTENCES, speak

TINY = "whisper-tiny.en"
KOKORO = "kokoro-82m"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """{(sample name, sorted labels): value} from a Prometheus exporter."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def get_json(url: str) -> dict:
    return json.loads(urllib.request.urlopen(url, timeout=10).read())


def per_model(api: dict) -> dict[str, dict]:
    """The monitor's /api/stats models, by name."""
    return {m["model"]: m for s in api["services"] for m in s["models"]}


@contextmanager
def watching(url: str) -> Iterator[None]:
    """Fetch `url` every half second in a thread while the block runs, as an open page does."""
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(0.5):
            get_json(url)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(15)


def transcribe(bus: Bus, index: int, **fields: object) -> dict:
    audio = speak(SENTENCES[index]).tolist()
    return bus.request({"action": "transcribe", "audio_data": audio, "model_pref": TINY, **fields})


def synthesize(bus: Bus, text: str) -> dict:
    message = {"action": "synthesize", "text": text, "format": "pcm", "speed": 2.0}
    return bus.request(message, address=bus.tts_address)


def model_stats(bus: Bus, address: str, model: str) -> dict:
    return next(m for m in bus.request({"action": "stats"}, address=address)["models"] if m["model"] == model)


def test_metrics_follow_known_traffic(bus):
    tiny, kokoro = (("model", TINY),), (("model", KOKORO),)
    before = scrape(bus.metrics_url)
    stats_before = model_stats(bus, bus.stt_address, TINY)

    replies = [transcribe(bus, 0), transcribe(bus, 1)]
    refused = transcribe(bus, 2, language="de")  # tiny.en speaks English only: its engine says no
    spoken = synthesize(bus, "Metrics count this.")

    assert [r["status"] for r in [*replies, spoken]] == ["success"] * 3, [*replies, spoken]
    assert refused["error"]["code"] == "invalid_field", refused
    after = scrape(bus.metrics_url)

    def delta(name: str, labels: tuple[tuple[str, str], ...]) -> float:
        return after[(name, labels)] - before.get((name, labels), 0.0)

    assert delta("voicebus_request_success_total", tiny) == 2
    assert delta("voicebus_request_failure_total", (("model", TINY), ("reason", "invalid_field"))) == 1
    assert delta("voicebus_request_success_total", kokoro) == 1
    # Each answered request waited in the queue once and was one item of one batch.
    assert delta("voicebus_queue_duration_seconds_count", tiny) == 2
    assert delta("voicebus_batch_size_sum", tiny) == 2
    assert delta("voicebus_compute_duration_seconds_count", tiny) >= 1
    assert delta("voicebus_compute_duration_seconds_sum", tiny) > 0
    assert delta("voicebus_queue_duration_seconds_count", kokoro) == 1
    for model in (tiny, kokoro):
        assert after[("voicebus_pending_requests", model)] == 0
        assert after[("voicebus_workers_ready", model)] == after[("voicebus_workers", model)] >= 1
    assert after[("voicebus_cpu_memory_rss_bytes", ())] > 100 * 2**20

    # `stats` tells the same story as the metrics.
    stats_after = model_stats(bus, bus.stt_address, TINY)
    assert stats_after["succeeded"] - stats_before["succeeded"] == 2
    assert stats_after["errors"]["invalid_field"] - stats_before["errors"].get("invalid_field", 0) == 1
    assert stats_after["workers"]["ready"] == stats_after["workers"]["total"]
    stats = bus.request({"action": "stats"})
    assert stats["workers"]["ready"] == stats["workers"]["total"] >= 2
    assert all(m["process_rss_bytes"] > 0 for m in stats["memory"].values())


@pytest.fixture(scope="module")
def monitored_bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bus]:
    """A bus of its own, since the last test here kills its model manager."""
    started = start_bus(tmp_path_factory.mktemp("monitored"), NO_WARMUP)
    yield started
    stop_bus(started)


class ModelFields(HTMLParser):
    """Collects the text of every element with a data-field inside a data-model card."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, dict[str, str]] = {}
        self._model: str | None = None
        self._field: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if attributes.get("data-model"):
            self._model = attributes["data-model"]
            self.fields[self._model] = {}
        elif self._model and attributes.get("data-field"):
            self._field = attributes["data-field"]
            self.fields[self._model].setdefault(self._field, "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self._model = None
        self._field = None

    def handle_data(self, data: str) -> None:
        if self._model and self._field:
            self.fields[self._model][self._field] += data


def chromium(url: str, tmp: Path, *mode: str) -> subprocess.CompletedProcess:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no chromium installed (scripts/test.sh installs it)")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp / 'chromium-profile'}",
        "--window-size=1200,900",
        "--virtual-time-budget=5000",
    ]
    return subprocess.run([browser, *flags, *mode, url], capture_output=True, text=True, timeout=120)


def test_monitor_page_shows_live_numbers_in_a_real_browser(monitored_bus, tmp_path):
    bus = monitored_bus
    api_url = bus.monitor_url + "api/stats"
    items = [{"audio_data": speak(SENTENCES[i]).tolist(), "request_id": i} for i in range(3)]
    with watching(api_url):  # as an open page would: the monitor samples only while watched
        batch = bus.request({"action": "batch_transcribe", "batch_data": items, "model_pref": TINY})
        assert [r["status"] for r in batch["results"]] == ["success"] * 3, batch
        assert transcribe(bus, 3)["status"] == "success"
        api = wait_for(
            lambda: get_json(api_url),
            lambda api: per_model(api)[TINY].get("throughput_rps", 0) > 0,
            10,
            "the monitor showed no STT throughput",
        )
        assert synthesize(bus, "Hello from the monitor test.")["status"] == "success"

    api = wait_for(  # a sample may be up to two seconds old
        lambda: get_json(api_url),
        lambda api: (per_model(api)[TINY]["requests"], per_model(api)[KOKORO].get("requests")) == (4, 1),
        10,
        "the monitor did not count the requests sent",
    )
    assert {s["task"]: s["model_manager"] for s in api["services"]} == {"stt": "up", "tts": "up"}

    dom = chromium(bus.monitor_url, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    parser = ModelFields()
    parser.feed(dom.stdout)
    tiny, kokoro = parser.fields[TINY], parser.fields[KOKORO]
    assert (tiny["requests"], tiny["succeeded"], kokoro["requests"]) == ("4", "4", "1"), parser.fields
    assert tiny["queue_depth"] == kokoro["queue_depth"] == "0"
    assert float(tiny["throughput_rps"]) >= 0.0
    fired = dict(pair.rsplit(" ", 1) for pair in tiny["fire_reasons"].split(", "))  # "full 1, ..."
    assert sum(int(n) for n in fired.values()) == int(tiny["batches"]) >= 1, tiny
    for row in ("queue_wait_ms", "compute_ms"):
        p50, p99 = float(tiny[f"{row}.p50"]), float(tiny[f"{row}.p99"])
        assert 0 <= p50 <= p99, tiny
    assert float(tiny["compute_ms.p50"]) > 0

    shot = tmp_path / "monitor.png"
    result = chromium(bus.monitor_url, tmp_path, f"--screenshot={shot}")
    assert result.returncode == 0 and shot.stat().st_size > 20_000, result.stderr[-2000:]
    print(f"monitor screenshot: {shot}")


def model_manager_process(launcher_pid: int) -> psutil.Process:
    for child in psutil.Process(launcher_pid).children():
        if "model_manager" in " ".join(child.cmdline()):
            return child
    raise AssertionError("no model manager process")


def wait_for(fetch: Callable[[], dict], ok: Callable[[dict], bool], timeout_s: float, what: str) -> dict:
    """Call `fetch()` every 0.2 s until `ok` holds for its answer; return that answer."""
    deadline = time.monotonic() + timeout_s
    answer: dict = {}
    while time.monotonic() < deadline:
        answer = fetch()
        if ok(answer):
            return answer
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout_s} s; last answer: {answer}")


def test_health_flips_when_the_model_manager_dies_and_back_when_it_returns(monitored_bus):
    bus = monitored_bus
    victim = model_manager_process(bus.process.pid)
    for address in (bus.stt_address, bus.tts_address):
        health = bus.request({"action": "health"}, address=address)
        assert health["ready"] and health["model_manager"] == "up"
        assert health["models"] and all(m["ready"] for m in health["models"])

    victim.suspend()  # alive but silent: only the missing heartbeats can tell
    try:
        for address in (bus.stt_address, bus.tts_address):  # each agent listens on its own
            health = wait_for(
                lambda address=address: bus.request({"action": "health"}, address=address, timeout_s=5),
                lambda h: h["model_manager"] == "down",
                10,
                "health did not say the model manager is down",
            )
            assert health["live"] is True and health["ready"] is False
            assert health["models"] and not any(m["ready"] for m in health["models"])
        reply = transcribe(bus, 0, timeout_ms=1000)  # waits for a model manager within its timeout
        assert reply["error"]["code"] == "model_unavailable", reply
        page = wait_for(
            lambda: get_json(bus.monitor_url + "api/stats"),
            lambda page: all(s["model_manager"] == "down" for s in page["services"]),
            15,
            "the monitor did not show the model manager down",
        )
        assert not any(m["ready"] for s in page["services"] for m in s["models"])
    finally:
        victim.kill()  # the launcher restarts it

    ready = wait_for(
        lambda: bus.request({"action": "health"}, timeout_s=5),
        lambda h: h["ready"],
        240,
        "the restarted model manager did not become ready",
    )
    assert ready["model_manager"] == "up" and all(m["ready"] for m in ready["models"])
    assert model_manager_process(bus.process.pid).pid != victim.pid
    # The new process serves metrics on the same port, counting from zero again.
    assert scrape(bus.metrics_url)[("voicebus_request_success_total", (("model", TINY),))] == 0


def test_the_autoscalers_queries_find_their_series_on_a_running_bus(bus):
    """deploy/k8s's KEDA ScaledObjects scale on `sum(voicebus_model_demand{model=...})`: that
    series exists, with those labels, on the agents' exporters from the start (0 when idle)."""
    import re
    import urllib.request
    from pathlib import Path

    import yaml
    from prometheus_client.parser import text_string_to_metric_families

    samples = set()
    for url in (bus.stt_metrics_url, bus.tts_metrics_url):
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples.add((sample.name, tuple(sorted(sample.labels.items()))))
    root = Path(__file__).resolve().parents[2]
    documents = yaml.safe_load_all((root / "deploy/k8s/base/scaledobjects.yaml").read_text())
    queries = [trigger["metadata"]["query"] for doc in documents if doc and doc.get("kind") == "ScaledObject"
               for trigger in doc["spec"]["triggers"]]
    assert queries
    for query in queries:
        name, matchers = re.fullmatch(r"sum\((\w+)\{(.*)\}\)", query).groups()
        wanted = dict(re.findall(r'(\w+)="([^"]*)"', matchers))
        assert any(n == name and wanted.items() <= dict(labels).items() for n, labels in samples), query
    assert ("voicebus_model_managers", (("model", "whisper-tiny.en"),)) in samples
    assert ("voicebus_jobs_resent_total", (("task", "stt"),)) in samples
