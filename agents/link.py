"""The agent's link to the model manager: one DEALER socket, the ping/pong liveness, and
sending that never blocks the agent's loop."""

from __future__ import annotations

import logging
import time
from typing import Any

import zmq

from model_manager import protocol
from model_manager.errors import MODEL_UNAVAILABLE, BusError

log = logging.getLogger(__name__)


class ModelManagerLink:
    def __init__(self, context: zmq.Context, port: int) -> None:
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(f"tcp://127.0.0.1:{port}")
        self.last_pong: dict[str, Any] = {}
        self.last_pong_at = float("-inf")

    def close(self) -> None:
        self.socket.close()

    @property
    def alive(self) -> bool:
        """A pong within the last LIVENESS_INTERVALS ping intervals."""
        limit = protocol.PING_INTERVAL_S * protocol.LIVENESS_INTERVALS
        return time.monotonic() - self.last_pong_at < limit

    def require_alive(self) -> None:
        """BusError(model_unavailable) unless the model manager answers: new work is refused
        at once rather than left waiting for a model manager that may not come back."""
        if not self.alive:
            raise BusError(MODEL_UNAVAILABLE, "the model manager is not reachable; retry shortly")

    def send(self, message: dict[str, Any], body: bytes | None = None) -> bool:
        """Send `message` (already packed as `body`, when given); False when the link is
        full (the socket's high-water mark): the caller answers or retries, nothing waits."""
        try:
            body = protocol.pack(message) if body is None else body
            self.socket.send_multipart([protocol.INTERNAL_VERSION, body], zmq.NOBLOCK)
            return True
        except zmq.Again:
            log.warning("model manager link is full; %s not sent", message.get("type"))
            return False

    def receive(self) -> dict[str, Any] | None:
        """The next message from the model manager, or None for a malformed one."""
        frames = self.socket.recv_multipart()
        if len(frames) != 2 or frames[0] != protocol.INTERNAL_VERSION:
            log.warning("dropping malformed message from the model manager")
            return None
        return protocol.unpack(frames[1])

    def on_pong(self, message: dict[str, Any]) -> bool:
        """Record a pong; True when in-flight jobs must be sent again: a new instance never
        saw them, and after a silence the model manager may have taken this agent for dead
        and dropped them (it ignores a job_id it already holds)."""
        previous, was_alive = self.last_pong.get("instance"), self.alive
        self.last_pong, self.last_pong_at = message, time.monotonic()
        return message.get("instance") != previous or not was_alive
