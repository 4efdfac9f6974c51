"""The gateway's own Prometheus metrics (GET /metrics) and one log line per request."""

from __future__ import annotations

import logging
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("voicebus.gateway.http")

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("voicebus_gateway_requests_total", "HTTP requests answered",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("voicebus_gateway_request_duration_seconds",
                                 "From the request's arrival to its last response byte", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.in_flight = Gauge("voicebus_gateway_requests_in_flight", "HTTP requests being served",
                               registry=self.registry)
        self.first_audio = Histogram("voicebus_gateway_first_audio_seconds",
                                     "From a speech request's arrival to its first audio byte", ["route"],
                                     buckets=LATENCY_BUCKETS, registry=self.registry)
        self.disconnects = Counter("voicebus_gateway_client_disconnects_total",
                                   "Requests whose client left before the answer; their work was cancelled",
                                   ["route"], registry=self.registry)
        self.realtime_sessions = Gauge("voicebus_gateway_realtime_sessions",
                                       "Open /v1/realtime transcription connections", registry=self.registry)


class RequestLog:
    """ASGI middleware: counts, times and logs every HTTP request
    (`method path status ms`), labelled by its route template, not its raw path."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, recording_send)
        finally:
            self.metrics.in_flight.dec()
            route = getattr(scope.get("route"), "path", "unmatched")
            elapsed = time.monotonic() - started
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(elapsed)
            log.info("%s %s %d %.0fms", scope["method"], scope["path"], status, elapsed * 1000)
