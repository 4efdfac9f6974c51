"""A model manager's links to the agents it serves: one DEALER connected out to each
agent's backend (docs/protocol.md §6), with the Paranoid Pirate heartbeats.

This module moves messages and keeps the liveness of each agent; what a message means is
the model manager's business (model_manager/agent.py). Each agent is known by its address,
encoded, which is what the model manager's jobs use as their `reply_to`.

- READY goes to every agent once the models are loaded (`announce`), and again to an agent
  that says it does not know this manager (it restarted, or took the manager for dead);
- a heartbeat goes to every agent each second; an agent silent for three is taken for dead
  (`silent`), and the model manager drops its queued jobs: they would run for nobody;
- `accepted` tells whether any agent has acknowledged READY (the readiness probe's answer).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import zmq

from agents import security
from model_manager import link_protocol as link
from model_manager.config import Security

log = logging.getLogger(__name__)

#: A refused manager asks again this often, so that an agent whose configuration was fixed
#: and that restarted takes it without a person.
REFUSED_RETRY_S = 10.0


@dataclass
class AgentLink:
    address: str
    socket: zmq.Socket
    #: When the agent was last heard from (monotonic); -inf: never.
    last_heard: float = float("-inf")
    #: READY was acknowledged (a heartbeat came after it) and the agent is not silent.
    accepted: bool = False
    ready_sent_at: float = float("-inf")
    refused_reason: str = ""

    @property
    def key(self) -> bytes:
        return self.address.encode()


class AgentLinks:
    def __init__(self, context: zmq.Context, addresses: list[str], instance: str, settings: Security) -> None:
        self.links: dict[bytes, AgentLink] = {}
        for address in addresses:
            sock = context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 2000)
            # One identity for every connection of this process: an agent that sees the link
            # come back (a flap) hands it over to the same record, with its jobs.
            sock.setsockopt(zmq.ROUTING_ID, instance.encode())
            sock.setsockopt(zmq.RECONNECT_IVL, 200)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
            security.secure_model_manager_socket(sock, settings)
            sock.connect(address)
            self.links[address.encode()] = AgentLink(address, sock)
        self._ready: link.Ready | None = None
        self._next_beat = 0.0
        self.draining = False

    def close(self) -> None:
        for agent in self.links.values():
            agent.socket.close()

    def sockets(self) -> Iterator[zmq.Socket]:
        return (agent.socket for agent in self.links.values())

    def receive(self, sock: zmq.Socket) -> Iterator[tuple[bytes, dict[str, Any] | link.ControlMessage]]:
        """Every message waiting on `sock`, with the key of its agent. The link's own messages
        (heartbeats, disconnects) are handled here and not passed on."""
        agent = next(a for a in self.links.values() if a.socket is sock)
        now = time.monotonic()
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                message = link.decode(frames)
            except ValueError as exc:
                log.warning("dropping a message from agent %s: %s", agent.address, exc)
                continue
            agent.last_heard = now
            if isinstance(message, link.Heartbeat):
                agent.accepted = agent.ready_sent_at > float("-inf")
            elif isinstance(message, link.Disconnect):
                agent.accepted = False
                if message.again:
                    log.info("agent %s does not know this model manager; registering again", agent.address)
                    self._say_ready(agent, now)
                else:
                    if message.reason != agent.refused_reason:
                        log.error("agent %s refused this model manager: %s", agent.address, message.reason)
                    agent.refused_reason = message.reason
                yield agent.key, message  # the model manager drops the jobs that agent forgot
            else:
                yield agent.key, message

    def send(self, key: bytes, message: dict[str, Any] | link.ControlMessage,
             body: bytes | None = None) -> bool:
        agent = self.links.get(key)
        if agent is None:
            return False
        frames = link.encode(message) if body is None else [link.LINK_VERSION, body]
        try:
            agent.socket.send_multipart(frames, zmq.NOBLOCK)
            return True
        except zmq.ZMQError as exc:  # full or not connected: the agent resends after a silence
            log.warning("cannot send to agent %s: %s", agent.address, exc)
            return False

    def announce(self, ready: link.Ready) -> None:
        """The models are loaded: register with every agent, now and after every silence."""
        self._ready = ready
        now = time.monotonic()
        for agent in self.links.values():
            self._say_ready(agent, now)

    def _say_ready(self, agent: AgentLink, now: float) -> None:
        if self._ready is not None and self.send(agent.key, self._ready):
            agent.ready_sent_at = now

    def tick(self, now: float, beat: link.Heartbeat) -> list[bytes]:
        """Heartbeats out; returns the agents newly taken for dead (silent LIVENESS_S)."""
        if self._ready is None:
            return []
        if now >= self._next_beat:
            self._next_beat = now + link.HEARTBEAT_INTERVAL_S
            for agent in self.links.values():
                if agent.refused_reason and now - agent.ready_sent_at >= REFUSED_RETRY_S:
                    agent.refused_reason = ""
                    self._say_ready(agent, now)
                self.send(agent.key, beat)
        silent = []
        for agent in self.links.values():
            if agent.accepted and now - agent.last_heard >= link.LIVENESS_S:
                agent.accepted = False
                silent.append(agent.key)
                log.warning("agent %s is silent; registering again when it is back", agent.address)
                # Paranoid Pirate: say READY again; the agent (restarted or back) takes it.
                self._say_ready(agent, now)
        return silent

    def beat_now(self, beat: link.Heartbeat) -> None:
        """A heartbeat to every agent at once (a drain begins: no new work from now on)."""
        for agent in self.links.values():
            self.send(agent.key, beat)

    def say_goodbye(self, reason: str) -> None:
        for agent in self.links.values():
            self.send(agent.key, link.Disconnect(reason))

    @property
    def accepted(self) -> bool:
        return any(agent.accepted for agent in self.links.values())
