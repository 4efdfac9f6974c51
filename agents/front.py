"""The ROUTER socket clients connect to: binding it, reading their messages, sending replies.

Contract:
- The socket is bound on `endpoints.host` and the agent's port, secured as the configuration
  says (agents/security.py). ZeroMQ drops a frame over `hard_cap` bytes together with its
  connection, so that a huge frame never fills memory; a smaller one reaches the agent,
  which answers `message_too_large` beyond its own limit.
- `receive()` reads one message: its frames, or None when the client's connection has
  closed already (it sent it just before it hung up: nobody is left to answer).
- `gone(routing_id)` is called for each client whose connection closed after it sent
  something: while `receive` reads, and on `drain_events()` when the monitor has news. Events
  are always applied before the message they precede (see agents/connections.py).
- `send` encodes a reply in the encoding its client spoke; one that encoding cannot carry
  goes out as `internal_error`. A client that cannot be reached is logged, never raised.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import zmq

from agents import security
from agents.connections import MONITOR_EVENTS, ConnectionTracker, drain_monitor, message_fd
from agents.sinks import ClientCall
from model_manager import protocol
from model_manager.config import Config
from model_manager.errors import internal_error

log = logging.getLogger(__name__)


class ClientSocket:
    def __init__(self, context: zmq.Context, config: Config, port: int, hard_cap: int,
                 gone: Callable[[bytes], None]) -> None:
        self.socket = context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.MAXMSGSIZE, hard_cap)
        self.socket.setsockopt(zmq.LINGER, 1000)
        self.authenticator = security.secure_server_socket(self.socket, context, config.security)
        self.monitor = self.socket.get_monitor_socket(MONITOR_EVENTS)
        self.socket.bind(f"tcp://{config.endpoints.host}:{port}")
        self.connections = ConnectionTracker()
        self._gone = gone

    def receive(self) -> list[bytes] | None:
        # Connection events first: then the message's descriptor is known to belong to its
        # sender's connection, or known to be closed.
        self.drain_events()
        frames = self.socket.recv_multipart(copy=False)
        raw = [frame.bytes for frame in frames]
        if not self.connections.message(message_fd(frames[0]), raw[0]):
            return None
        return raw

    def drain_events(self) -> None:
        drain_monitor(self.monitor, self.connections, self._gone)

    def send(self, call: ClientCall, reply: dict[str, Any]) -> None:
        try:
            body = protocol.encode_reply(reply, call.encoding)
        except Exception as exc:  # a reply the encoding cannot carry must still be answered
            log.exception("cannot encode a reply")
            failure = internal_error(exc, "the reply could not be encoded")
            body = protocol.encode_reply(protocol.error_reply(failure), call.encoding)
        try:
            self.socket.send_multipart([*call.envelope, body])
        except zmq.ZMQError as exc:
            log.warning("cannot reply to a client: %s", exc)

    def close(self) -> None:
        self.socket.disable_monitor()
        self.monitor.close()
        self.socket.close()
        if self.authenticator is not None:
            self.authenticator.stop()
