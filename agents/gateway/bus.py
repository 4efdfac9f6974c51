"""The gateway's asyncio client of the bus: the agents' own protocol (docs/protocol.md), in
msgpack, so that HTTP requests queue and batch with every other client's.

Each request goes out on a DEALER socket of its own, with the REQ envelope (an empty
delimiter frame), and the socket is closed with linger 0 when the reply is in or the caller
is cancelled. Any number of requests are in flight at once, and a caller that is cancelled
(its HTTP client hung up) closes its socket: the agent sees the connection go and drops the
jobs that have not run (docs/protocol.md §3). A stream, which is fetched by `request_id` and
outlives a socket, is stopped with `cancel` instead.

`HealthWatch` asks each agent for `health` every second, so that the gateway refuses work
with 503 at once while the models load or an agent is down, instead of waiting out a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import zmq
import zmq.asyncio

from agents.model_client import CurveKeys
from agents.security import secure_client_socket
from model_manager.errors import MODEL_UNAVAILABLE, NO_REPLY, BusError

log = logging.getLogger("voicebus.gateway.bus")

HEALTH_INTERVAL_S = 1.0
#: For replies that come at once (stats, voices, cancel): an agent that does not answer in
#: this long is not there.
CONTROL_TIMEOUT_S = 5.0
#: Beyond the bus's own request timeout: the bus answers every request within its timeout
#: plus a 2 s grace, so this is only reached when an agent is gone.
REPLY_GRACE_S = 10.0


class BusReplyError(Exception):
    """A bus reply with status "error"; `error` is its {code, message, ...} map."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"{error.get('code')}: {error.get('message')}")
        self.error = error


def error_fields(exc: BusReplyError | BusError) -> tuple[str, str]:
    """The code and message of a bus error, raised or replied."""
    if isinstance(exc, BusReplyError):
        return str(exc.error.get("code")), str(exc.error.get("message"))
    return exc.code, exc.message


@dataclass
class AgentHealth:
    reply: dict[str, Any] = field(default_factory=dict)
    checked_at: float = 0.0

    @property
    def ready(self) -> bool:
        return bool(self.reply.get("ready"))


class BusClient:
    """Requests to the STT and TTS agents at `addresses` ({"stt": "tcp://...", "tts": ...})."""

    def __init__(self, addresses: dict[str, str], request_timeout_s: float, curve: CurveKeys | None = None
                 ) -> None:
        self.addresses = addresses
        self.timeout_s = request_timeout_s + REPLY_GRACE_S
        self.curve = curve
        self.context = zmq.asyncio.Context()
        self.health: dict[str, AgentHealth] = {task: AgentHealth() for task in addresses}
        self._background: set[asyncio.Task[Any]] = set()

    def _socket(self, task: str) -> zmq.asyncio.Socket:
        if task not in self.addresses:
            raise BusError(MODEL_UNAVAILABLE, f"no {task.upper()} models are configured on this bus")
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if self.curve is not None:
            secure_client_socket(sock, *self.curve)
        sock.connect(self.addresses[task])
        return sock

    async def request(self, task: str, message: dict[str, Any], timeout_s: float | None = None
                      ) -> dict[str, Any]:
        """The agent's reply to `message` (success or error, as sent). Raises BusError(NO_REPLY)
        when none comes in time; cancelling the caller closes the socket, which drops the
        request's unrun jobs on the bus."""
        sock = self._socket(task)
        try:
            return await self._exchange(sock, message, timeout_s or self.timeout_s)
        finally:
            sock.close(linger=0)

    async def _exchange(self, sock: zmq.asyncio.Socket, message: dict[str, Any], timeout_s: float
                        ) -> dict[str, Any]:
        await sock.send_multipart([b"", msgpack.packb(message, use_bin_type=True)])
        try:
            frames = await asyncio.wait_for(sock.recv_multipart(), timeout_s)
        except asyncio.TimeoutError:
            raise BusError(NO_REPLY, f"no reply from the bus within {timeout_s:.0f} s") from None
        return msgpack.unpackb(frames[-1], raw=False)

    async def call(self, task: str, message: dict[str, Any]) -> dict[str, Any]:
        """`request`, raising BusReplyError for an error reply."""
        reply = await self.request(task, message)
        if reply.get("status") == "error":
            raise BusReplyError(reply.get("error") or {})
        return reply

    async def stream(self, message: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """A TTS `stream`: yields each chunk reply in order (an error chunk as it came). An
        error reply to `stream` itself raises BusReplyError. Leaving early (the consumer
        stopped or was cancelled) cancels the chunks that have not run."""
        request_id = f"gateway-{uuid.uuid4().hex}"
        sock = self._socket("tts")
        finished = False
        try:
            opened = await self._exchange(sock, {**message, "action": "stream", "request_id": request_id},
                                          self.timeout_s)
            if opened.get("status") == "error":
                finished = True  # nothing was registered
                raise BusReplyError(opened.get("error") or {})
            for _ in range(int(opened["num_chunks"])):
                chunk = await self._exchange(sock, {"action": "next_chunk", "request_id": request_id},
                                             self.timeout_s)
                finished = bool(chunk.get("final"))
                yield chunk
        finally:
            sock.close(linger=0)
            if not finished:
                self.cancel_in_background("tts", request_id)

    async def open_live(self, fields: dict[str, Any]) -> LiveLink:
        """A live speech-to-text stream (`stream_open` with `fields`). An error reply raises
        BusReplyError."""
        link = LiveLink(self, f"gateway-{uuid.uuid4().hex}")
        try:
            await link.call(link.audio_socket, {**fields, "action": "stream_open"})
        except BaseException:
            link.release()
            raise
        return link

    def cancel_in_background(self, task: str, request_id: str) -> None:
        """`cancel` the stream `request_id`, from cleanup code that cannot await."""
        self._in_background(self.request(task, {"action": "cancel", "request_id": request_id},
                                         CONTROL_TIMEOUT_S))

    def _in_background(self, coroutine: Any) -> None:
        # A cancelled caller cannot await in its cleanup; the task is kept until it is done.
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def ready(self, task: str) -> bool:
        return task in self.health and self.health[task].ready

    def check_ready(self, task: str) -> None:
        """BusError(MODEL_UNAVAILABLE) unless the agent said it is ready at its last health check."""
        if task not in self.addresses:
            raise BusError(MODEL_UNAVAILABLE, f"no {task.upper()} models are configured on this bus")
        if not self.ready(task):
            state = self.health[task].reply.get("model_manager") or "not answering"
            raise BusError(MODEL_UNAVAILABLE,
                           f"the {task.upper()} service is not ready (model manager: {state})")

    async def watch_health(self) -> None:
        """Refresh `health` every HEALTH_INTERVAL_S until cancelled."""
        while True:
            await asyncio.gather(*(self._check(task) for task in self.addresses))
            await asyncio.sleep(HEALTH_INTERVAL_S)

    async def _check(self, task: str) -> None:
        try:
            reply = await self.request(task, {"action": "health"}, timeout_s=HEALTH_INTERVAL_S)
        except BusError:
            reply = {}
        self.health[task] = AgentHealth(reply, time.monotonic())

    async def close(self) -> None:
        for task in list(self._background):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 1.0)
        self.context.destroy(linger=0)  # any socket still open (a request cut off by shutdown)


class LiveLink:
    """One live stream on the STT agent (docs/protocol.md, live speech-to-text), on two
    sockets of its own, so that audio goes out on one while `next_event` waits on the other.
    The events of both come back in the stream's order by their `seq`; `release()` closes
    the sockets, and a stream not closed by then is cancelled."""

    def __init__(self, bus: BusClient, request_id: str) -> None:
        self.bus, self.request_id = bus, request_id
        self.audio_socket = bus._socket("stt")
        self.event_socket = bus._socket("stt")
        self.done = False

    async def call(self, sock: zmq.asyncio.Socket, message: dict[str, Any], timeout_s: float | None = None
                   ) -> dict[str, Any]:
        reply = await self.bus._exchange(sock, {**message, "request_id": self.request_id},
                                         timeout_s or self.bus.timeout_s)
        if reply.get("status") == "error":
            raise BusReplyError(reply.get("error") or {})
        self.done = self.done or bool(reply.get("done"))
        return reply

    async def send_audio(self, samples: np.ndarray) -> list[dict[str, Any]]:
        """Append 16 kHz float32 samples; the events ready now."""
        reply = await self.call(self.audio_socket, {"action": "stream_audio", "audio_data":
                                                    samples.astype("<f4", copy=False).tobytes()})
        return list(reply.get("events") or [])

    async def next_events(self, timeout_ms: int = 1000) -> list[dict[str, Any]]:
        reply = await self.call(self.event_socket, {"action": "next_event", "timeout_ms": timeout_ms},
                                timeout_ms / 1000 + REPLY_GRACE_S)
        return list(reply.get("events") or [])

    async def close(self) -> list[dict[str, Any]]:
        """End the stream: the events left, the last utterance's final included."""
        reply = await self.call(self.audio_socket, {"action": "stream_close"})
        self.done = True
        return list(reply.get("events") or [])

    def release(self) -> None:
        self.audio_socket.close(linger=0)
        self.event_socket.close(linger=0)
        if not self.done:
            self.done = True
            self.bus.cancel_in_background("stt", self.request_id)
