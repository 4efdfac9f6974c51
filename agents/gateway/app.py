"""The gateway's FastAPI application: the OpenAI audio API (openai_api.py) and seed 001's
endpoints (seed_api.py) on a `BusClient`, behind the API-key check, the upload limit and the
request log; GET /health (200 once every agent is ready, for the launcher) and GET /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from agents.gateway import openai_api, realtime, seed_api, transcripts, wyoming
from agents.gateway.auth import ApiKeyCheck
from agents.gateway.bus import BusClient
from agents.gateway.errors import (
    ApiError,
    api_error_handler,
    bus_error_handler,
    http_error_handler,
    validation_error_handler,
)
from agents.gateway.limits import BodyLimit
from agents.gateway.metrics import GatewayMetrics, RequestLog
from agents.gateway.names import Names
from agents.gateway.state import Gateway, gateway_of
from model_manager.config import Config
from model_manager.errors import BusError

log = logging.getLogger("voicebus.gateway")


def build_app(config: Config, bus: BusClient, api_keys: frozenset[str] = frozenset()) -> FastAPI:
    gateway = Gateway(config, bus, Names.from_config(config.gateway), GatewayMetrics())

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        watch = asyncio.ensure_future(bus.watch_health())
        # verbose_json's language table comes from a slow import: load it now, off the event
        # loop, rather than stall every HTTP client on the first verbose_json reply.
        warm = asyncio.ensure_future(asyncio.to_thread(transcripts.language_name, "en"))
        wyoming_server = await _start_wyoming(gateway)
        try:
            yield
        finally:
            if wyoming_server is not None:
                await wyoming_server.stop()
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
            await warm
            await bus.close()

    app = FastAPI(title="voicebus gateway", summary="OpenAI audio API and REST on the voicebus bus",
                  lifespan=lifespan)
    app.state.gateway = gateway
    app.add_exception_handler(ApiError, api_error_handler)
    app.add_exception_handler(BusError, bus_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.include_router(openai_api.router)
    app.include_router(seed_api.router)
    app.include_router(realtime.router)
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/metrics", metrics, methods=["GET"])
    # Outermost first: log every request, then refuse a bad key, then a body over the limit.
    app.add_middleware(BodyLimit, max_bytes=config.gateway.max_upload_bytes)
    app.add_middleware(ApiKeyCheck, keys=api_keys)
    app.add_middleware(RequestLog, metrics=gateway.metrics)
    return app


async def _start_wyoming(gateway: Gateway) -> Any:
    """The Wyoming server on endpoints.wyoming_port, or None: off, or its port taken (then the
    HTTP side still serves, and the log says why Wyoming does not)."""
    endpoints = gateway.config.endpoints
    if not endpoints.wyoming_port:
        return None
    try:
        return await wyoming.serve_wyoming(gateway, endpoints.host, endpoints.wyoming_port)
    except OSError as exc:
        log.error("Wyoming is off: cannot listen on %s:%d: %s", endpoints.host, endpoints.wyoming_port, exc)
        return None


async def health(request: Request) -> JSONResponse:
    """200 when every agent answered its last health check ready, else 503 (loading or down)."""
    bus = gateway_of(request).bus
    agents: dict[str, Any] = {
        task: {"ready": bus.ready(task),
               "model_manager": bus.health[task].reply.get("model_manager", "unreachable")}
        for task in bus.addresses}
    ready = all(agent["ready"] for agent in agents.values())
    return JSONResponse({"status": "ok" if ready else "loading", "agents": agents},
                        status_code=200 if ready else 503)


async def metrics(request: Request) -> Response:
    return Response(generate_latest(gateway_of(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)
