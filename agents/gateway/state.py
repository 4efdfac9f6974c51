"""What every route of the gateway shares, kept on `app.state.gateway`, and the way a route
waits for the bus: cancelled as soon as its HTTP client hangs up."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request

from agents.gateway.bus import BusClient, BusReplyError
from agents.gateway.errors import ApiError
from agents.gateway.metrics import GatewayMetrics
from agents.gateway.names import Names
from model_manager.config import Config
from model_manager.errors import BusError

T = TypeVar("T")
#: nginx's code for "the client closed the request": logged, never seen by the client.
CLIENT_CLOSED = 499


@dataclass
class Gateway:
    config: Config
    bus: BusClient
    names: Names
    metrics: GatewayMetrics


def gateway_of(request: Request) -> Gateway:
    return request.app.state.gateway


class ClientGone(ApiError):
    def __init__(self) -> None:
        super().__init__(CLIENT_CLOSED, "client_closed_request", "the client closed the connection")


async def until_disconnected(request: Request) -> None:
    """Returns when the client hangs up (the body has been read by then, so the next ASGI
    message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_client_leaves(request: Request, work: Awaitable[T]) -> T:
    """`work`'s result; if the client disconnects first, `work` is cancelled (which closes its
    bus socket, so the bus drops its jobs) and ClientGone is raised."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(until_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    if not task.done() or task.cancelled():
        gateway_of(request).metrics.disconnects.labels(request.url.path).inc()
        raise ClientGone()
    return task.result()


def raise_for_reply(reply: dict[str, Any]) -> dict[str, Any]:
    """A bus reply, or the ApiError its error maps to."""
    if reply.get("status") == "error":
        raise ApiError.from_bus(reply.get("error") or {})
    return reply


def timing_headers(reply: dict[str, Any]) -> dict[str, str]:
    """The bus's `timing` of a reply as headers (X-Voicebus-Prepare-Ms, -Queue-Ms, -Compute-Ms,
    -Batch-Size): where a request's time went, for clients and the benchmark."""
    timing = reply.get("timing") or {}
    names = {"prepare_ms": "X-Voicebus-Prepare-Ms", "queue_ms": "X-Voicebus-Queue-Ms",
             "compute_ms": "X-Voicebus-Compute-Ms", "batch_size": "X-Voicebus-Batch-Size"}
    return {header: str(timing[key]) for key, header in names.items() if timing.get(key) is not None}


def api_error(exc: BusReplyError | BusError) -> ApiError:
    return ApiError.from_bus(exc.error) if isinstance(exc, BusReplyError) else ApiError.from_bus_error(exc)
