"""The live monitoring page: a small HTTP server on 127.0.0.1, run by the launcher in threads.

    GET /           the page (agents/monitor.html); it fetches /api/stats every second
    GET /api/stats  JSON: the latest sample of every agent's `health` and `stats`

One sampler thread asks the agents (over zmq, with short timeouts) once a second while a
page is open, however many are, so watching the bus costs it the same with one viewer or
ten, and nothing with none; the HTTP handlers hand out the latest sample (taking one first
if it is stale). Throughput is computed here, from the change in each model's answered
requests over the last THROUGHPUT_WINDOW_S seconds.

The sample, per agent: `task`, `address`, `live`, `ready`, `model_manager` (as `health`
says), `error` (why the agent could not be asked), the agent's `stats` fields (among them
`model_managers`: each live one with its host, credit, jobs in flight and last heartbeat,
and `dispatch`: demand by model), and `models`: every model `health` or `stats` knows, one
per model manager holding it ("name @ instance"), each with `ready`, `throughput_rps` and,
when the model manager answered, its `stats` numbers.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from agents.model_client import ClientConfig, ModelClient

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 1.0
HEALTH_TIMEOUT_S = 1.0
# Longer than the agent's own wait for the model manager (2 s), so that a dead model manager
# shows as the agent's answer without model numbers, not as a silent agent.
STATS_TIMEOUT_S = 3.0
THROUGHPUT_WINDOW_S = 10.0
# A sample older than this is taken afresh when a page asks for it.
FRESH_S = 2 * POLL_INTERVAL_S
# The sampler stops this long after the last page asked, and starts again with the next ask.
IDLE_AFTER_S = 10.0
HOST = "127.0.0.1"


class ThroughputMeter:
    """Requests per second per model, from a cumulative request count sampled over time."""

    def __init__(self, window_s: float = THROUGHPUT_WINDOW_S) -> None:
        self.window_s = window_s
        self._samples: dict[str, deque[tuple[float, int]]] = {}

    def rate(self, model: str, now: float, count: int) -> float:
        """Record `count` at `now` (monotonic seconds); return the rate over the window, 0.0
        until two samples exist. A count that went down (the model manager restarted and
        its counters began again), or a gap longer than the window (nobody was watching),
        starts the model afresh."""
        samples = self._samples.setdefault(model, deque())
        if samples and (count < samples[-1][1] or now - samples[-1][0] > self.window_s):
            samples.clear()
        samples.append((now, count))
        # Keep one sample at or beyond the window's start, so the rate spans the whole window.
        while len(samples) > 2 and samples[1][0] <= now - self.window_s:
            samples.popleft()
        (t0, c0), (t1, c1) = samples[0], samples[-1]
        return (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0


class Monitor:
    """Samples the agents at `addresses` ({task: zmq address}) and keeps the latest sample."""

    def __init__(self, addresses: dict[str, str], client: ModelClient | None = None) -> None:
        self.addresses = dict(addresses)
        self.client = client or ModelClient(ClientConfig(connect_timeout_s=HEALTH_TIMEOUT_S, retries=0))
        self.meter = ThroughputMeter()
        self._lock = threading.Lock()  # one sample at a time; guards the meter and the latest
        self._latest: dict[str, Any] = {"time": time.time(), "services": []}
        self._latest_at = float("-inf")
        self._wanted_at = float("-inf")
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(self.addresses)), thread_name_prefix="monitor")

    def latest(self) -> dict[str, Any]:
        """The latest sample, taken now if it is older than FRESH_S; keeps the sampler going.
        While a sample is being taken (agents can take seconds to answer), the page gets the
        one before rather than wait: the next refresh shows the new one."""
        self._wanted_at = time.monotonic()
        have_one = self._latest_at > float("-inf")
        if not self._lock.acquire(blocking=not have_one):
            return self._latest
        try:
            if time.monotonic() - self._latest_at > FRESH_S:
                self._sample_locked()
            return self._latest
        finally:
            self._lock.release()

    def sample(self) -> dict[str, Any]:
        """Ask every agent at once (a slow one does not hold up the others); store and return it."""
        with self._lock:
            return self._sample_locked()

    def _sample_locked(self) -> dict[str, Any]:
        started = time.monotonic()
        services = list(self._pool.map(self._sample_agent, self.addresses.items()))
        now = time.monotonic()
        for service in services:
            for model in service["models"]:
                if "requests" in model:
                    model["throughput_rps"] = round(
                        self.meter.rate(model["model"], now, model["requests"]), 3
                    )
        snapshot = {"time": time.time(), "sample_ms": round((now - started) * 1000, 1), "services": services}
        self._latest, self._latest_at = snapshot, now
        return snapshot

    def run(self, stop: threading.Event) -> None:
        """Sample every POLL_INTERVAL_S while a page is watching, until `stop` is set."""
        while not stop.is_set():
            started = time.monotonic()
            try:
                if started - self._wanted_at <= IDLE_AFTER_S:
                    self.sample()
            except Exception:  # the page must keep updating whatever one sample ran into
                log.exception("monitor sample failed")
            stop.wait(max(0.0, POLL_INTERVAL_S - (time.monotonic() - started)))
        self._pool.shutdown(wait=False)

    def _sample_agent(self, item: tuple[str, str]) -> dict[str, Any]:
        task, address = item
        service: dict[str, Any] = {"task": task, "address": address, "live": False, "ready": False}
        health = self.client.request(address, {"action": "health"}, timeout_s=HEALTH_TIMEOUT_S)
        if health.get("status") != "success":
            service.update(model_manager="unknown", error=_error_text(health), models=[])
            return service
        service.update(live=health["live"], ready=health["ready"], model_manager=health["model_manager"])
        stats = self.client.request(address, {"action": "stats"}, timeout_s=STATS_TIMEOUT_S)
        if stats.get("status") != "success":
            service["error"] = _error_text(stats)
            stats = {}
        for key in ("requests_by_action", "errors_by_code", "in_flight", "memory", "workers",
                    "model_managers", "dispatch"):
            service[key] = stats.get(key)
        # One card per model and model manager: with several managers, each batches its own share.
        by_name: dict[str, dict[str, Any]] = {}
        entries = stats.get("models") or []
        shared = {e["model"] for e in entries if sum(o["model"] == e["model"] for o in entries) > 1}
        for entry in entries:
            key = entry["model"]
            if key in shared:
                key = f"{key} @ {str(entry.get('instance'))[:8]}"
            by_name[key] = {**entry, "model": key}
        for known in health.get("models") or []:
            cards = [k for k in by_name if k == known["name"] or k.startswith(known["name"] + " @ ")]
            for key in cards or [known["name"]]:
                by_name.setdefault(key, {"model": key, "task": task})["ready"] = bool(known.get("ready"))
        service["models"] = list(by_name.values())
        return service


def _error_text(reply: dict[str, Any]) -> str:
    error = reply.get("error") or {}
    return f"{error.get('code', 'error')}: {error.get('message', reply)}"


class MonitorServer:
    """The page's HTTP server and the sampler, each in a daemon thread; `close()` stops both."""

    def __init__(self, monitor: Monitor, port: int, host: str = HOST) -> None:
        page = resources.files("agents").joinpath("monitor.html").read_bytes()
        self.monitor = monitor
        self._stop = threading.Event()
        self._http = ThreadingHTTPServer((host, port), _handler(monitor, page))
        self._http.daemon_threads = True
        self.url = f"http://{host}:{self._http.server_address[1]}/"
        self._threads = [
            threading.Thread(target=self._http.serve_forever, name="monitor-http", daemon=True),
            threading.Thread(target=monitor.run, args=(self._stop,), name="monitor-sampler", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        self._stop.set()
        self._http.shutdown()
        self._http.server_close()
        for thread in self._threads:
            thread.join(STATS_TIMEOUT_S + 1.0)


def start_monitor(addresses: dict[str, str], port: int, client: ModelClient | None = None) -> MonitorServer:
    """Serve the page for the agents at `addresses` on 127.0.0.1:port (0: any free port),
    asking them through `client` (the launcher's, which holds the CURVE keys when those are
    on). Raises OSError when the port is taken."""
    return MonitorServer(Monitor(addresses, client), port)


def _handler(monitor: Monitor, page: bytes) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
            path = self.path.split("?", 1)[0]
            if path in ("/", "/index.html"):
                self._reply(200, "text/html; charset=utf-8", page)
            elif path == "/api/stats":
                try:
                    body, code = json.dumps(monitor.latest(), default=str).encode(), 200
                except Exception as exc:  # the page says why, instead of losing the connection
                    log.exception("monitor sample failed")
                    body, code = json.dumps({"error": repr(exc)}).encode(), 500
                self._reply(code, "application/json", body)
            else:
                self._reply(404, "text/plain; charset=utf-8", b"not found\n")

        def _reply(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            # One request a second per open page: not worth a log line each.
            log.debug("monitor %s %s", self.address_string(), format % args)

    return Handler
