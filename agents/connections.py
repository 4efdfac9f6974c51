"""Which client left: a ROUTER socket's connections, followed from its monitor events.

A ROUTER socket never tells its owner that a peer went away, so the work a REQ client
asked for would run for nobody after the client closed its socket (a Lazy Pirate client
does exactly that when it gives up on an attempt and retries on a fresh socket). ZeroMQ
does report, on the socket's monitor, each connection accepted and each one closed, by file
descriptor; and each received message carries the descriptor it came in on (ZMQ_SRCFD).
`ConnectionTracker` joins the two: descriptor -> the routing id of the client on it.

Ordering contract (the caller's part): drain the monitor's events before reading each
message. A descriptor closed and reused by a new client then always shows as
`disconnected(fd)`, then `accepted(fd)`, then the new client's first message, so a message
is never charged to the client that had the descriptor before; and a message read after
its connection closed (sent just before the client hung up) is known for one from a client
that has gone.

`ConnectionTracker` is pure; `message_fd` and `drain_monitor` are the socket glue that
`agents/front.py` feeds it with.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

#: The monitor events the tracker needs.
MONITOR_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED


class ConnectionTracker:
    def __init__(self) -> None:
        # fd -> routing id of the client on it; None until its first message.
        self._owner: dict[int, bytes | None] = {}
        # fds whose connection closed and that no new connection has taken since
        self._closed: set[int] = set()

    def accepted(self, fd: int) -> None:
        self._owner[fd] = None
        self._closed.discard(fd)

    def message(self, fd: int, routing_id: bytes) -> bool:
        """A message from `routing_id` came in on `fd`. False when its connection has
        already closed: nobody is left to answer."""
        if fd < 0:
            return True
        if fd in self._closed:
            return False
        self._owner[fd] = routing_id
        return True

    def disconnected(self, fd: int) -> bytes | None:
        """The connection on `fd` closed: the routing id of its client, if it sent anything."""
        self._closed.add(fd)
        return self._owner.pop(fd, None)

    def __len__(self) -> int:
        return len(self._owner)


def message_fd(frame: Any) -> int:
    """The descriptor a received frame (a zmq.Frame) came in on; -1 when ZeroMQ cannot say
    (another transport, or a libzmq without ZMQ_SRCFD)."""
    try:
        return int(frame.get(zmq.SRCFD))
    except (zmq.ZMQError, AttributeError, TypeError, ValueError):
        return -1


def drain_monitor(monitor: zmq.Socket, tracker: ConnectionTracker, gone: Callable[[bytes], None]) -> None:
    """Apply every pending monitor event to `tracker`; call `gone(routing_id)` for each client
    whose connection closed after sending something."""
    while True:
        try:
            frames = monitor.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        event = parse_monitor_message(frames)
        fd = int(event["value"])
        if event["event"] == zmq.EVENT_ACCEPTED:
            tracker.accepted(fd)
        elif event["event"] == zmq.EVENT_DISCONNECTED:
            routing_id = tracker.disconnected(fd)
            if routing_id is not None:
                gone(routing_id)
