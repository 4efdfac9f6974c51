"""A service agent: the socket loop between clients and the model managers.

Clients connect plain zmq REQ (or DEALER) sockets to the agent's ROUTER socket. ROUTER,
unlike REP, lets the agent keep many clients' requests in flight at once, which is what lets
the model manager batch across clients. Each request is checked (agents/intake.py: off this
thread when big), handed to a model manager through the agent's backend (agents/backend.py:
model managers connect out to it, and each job goes to a live one holding its model, within
its credit), and answered when the result comes back through its reply sink (agents/sinks.py).

This module only moves messages: it receives a client's frames, routes the action to its
handler, and sends replies. The parts it drives each do one job:
- agents/front.py           the client socket: binding it, reading messages, encoding replies
- agents/intake.py          decoding and checking client frames, off the socket thread when big
- agents/agent_parts.py     the parts below, wired together: the action table, the clock
- agents/work.py            the work actions: single, batch, queue_for_batch, get_result, cancel
- agents/control_actions.py health, voices; stats and configure, gathered from every model manager
- agents/stream_actions.py  stream and next_chunk (TTS chunks), on stream_driver.py and streams.py
- agents/live_host.py       the live STT actions, and the LiveHost of agents/live/
- agents/shutdown.py        what a stopping agent still serves, refuses, and answers at the end
- agents/inflight.py        the jobs at the model manager, with their deadlines and retries
- agents/sinks.py           where each job's answer goes (a client, a batch, the journal, a stream)
- agents/results.py         the SQLite journal of queue_for_batch jobs and results

Guarantees (see docs/protocol.md):
- every request gets exactly one reply: a result, or an error with a code; an unexpected
  exception while handling one is an `internal_error` reply with its cause, logged with its
  traceback, and the agent serves on;
- nothing waits forever: a request unanswered after its timeout gets a "timeout" error, and
  a job waits for a model manager holding its model, within its deadline and the model
  wait bound (then model_unavailable); a lost manager's jobs go to another;
- a `queue_for_batch` job is journaled before "queued" goes out, so a restarted agent
  resubmits it, and its result stays fetchable across restarts.

Run: ``python -m agents.service_agent stt`` (or ``tts``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from agents.agent_parts import AgentParts
from agents.control import AgentCounters
from agents.front import ClientSocket
from agents.intake import Intake, Prepared
from agents.options import echoable
from agents.services import SERVICES, Service
from agents.sinks import ClientCall
from model_manager import protocol
from model_manager.config import Config, load_config
from model_manager.errors import (
    BAD_REQUEST,
    MESSAGE_TOO_LARGE,
    MISSING_FIELD,
    SHUTTING_DOWN,
    UNKNOWN_ACTION,
    BusError,
    internal_error,
)
from model_manager.protocol import Encoding
from model_manager.runtime import exit_on_config_error, setup_logging, stop_on_signals

log = logging.getLogger(__name__)

POLL_MS = 50
# ZMQ_MAXMSGSIZE sits this far above limits.max_message_bytes: frames in between get a
# message_too_large reply; only beyond it does ZeroMQ drop the connection, so that a huge
# frame never fills memory.
HARD_MESSAGE_CAP_FACTOR = 2


class ServiceAgent:
    def __init__(
        self, service: Service, config: Config, context: zmq.Context | None = None, port: int | None = None
    ) -> None:
        self.service = service
        self.config = config
        self.limits = config.limits
        self.context = context or zmq.Context.instance()
        self.port = port or (
            config.endpoints.stt_port if service.task == "stt" else config.endpoints.tts_port
        )
        self.counters = AgentCounters()

    def serve(self, stop: threading.Event) -> None:
        hard_cap = HARD_MESSAGE_CAP_FACTOR * self.limits.max_message_bytes
        self.front = ClientSocket(self.context, self.config, self.port, hard_cap,
                                  lambda routing_id: self.parts.client_gone(routing_id))
        self.intake = Intake(self.context, self.service, self.limits)
        self.parts = AgentParts(self.service, self.config, self.context, self.port, self._send, self.counters)
        steps = {self.front.socket: self._receive_client, self.front.monitor: self.front.drain_events,
                 self.intake.wake: lambda: self.intake.drain(self._on_prepared), **self.parts.readable()}
        poller = zmq.Poller()
        for sock in steps:
            poller.register(sock, zmq.POLLIN)
        log.info("%s agent listening on %s:%d; model managers connect to %s", self.service.task,
                 self.config.endpoints.host, self.port, self.parts.backend.address)
        self.parts.start()
        shutdown = self.parts.shutdown
        try:
            while True:
                now = time.monotonic()
                if stop.is_set():
                    shutdown.begin(now)
                if shutdown.stopping:
                    # Every turn, not once: a job a draining or lost manager gives back comes
                    # into the waiting line after the stop, and no manager will take it now.
                    self._guarded(shutdown.refuse_waiting_work)
                    if shutdown.over(now, self._clients_waiting()):
                        break
                for sock, _ in poller.poll(POLL_MS):
                    self._guarded(steps[sock])
                self._guarded(lambda: self.parts.tick(time.monotonic()))
            self.parts.answer_everyone()
        finally:
            self.intake.close()
            self.front.close()
            self.parts.close()

    def _guarded(self, step: Callable[[], None]) -> None:
        """A bug in one step costs that step, never the agent: each client request has a
        guard of its own that answers it (`_on_client`, `_on_prepared`, `Work.render`)."""
        try:
            step()
        except Exception:
            log.exception("unexpected error in the agent loop; serving on")

    def _clients_waiting(self) -> bool:
        return self.intake.in_progress > 0 or self.parts.clients_waiting()

    def _send(self, call: ClientCall, reply: dict[str, Any]) -> None:
        if reply.get("status") == "error":
            self.counters.errors[reply["error"]["code"]] += 1
        self.front.send(call, reply)

    # --- client side ----------------------------------------------------------------------

    def _receive_client(self) -> None:
        frames = self.front.receive()
        if frames is None:
            self.counters.dropped_for_gone_clients += 1  # sent just before its client hung up
            return
        self._on_client(frames)

    def _on_client(self, frames: list[bytes]) -> None:
        # REQ clients put an empty delimiter after their identity; DEALER clients may not.
        split = frames.index(b"") + 1 if b"" in frames else 1
        envelope, body = frames[:split], frames[split:]
        call = ClientCall(envelope, Encoding.JSON)
        try:
            if len(body) != 1:
                raise BusError(BAD_REQUEST, f"expected one body frame, got {len(body)}")
            call.encoding = protocol.sniff_encoding(body[0])
            if len(body[0]) > self.limits.max_message_bytes:
                raise BusError(
                    MESSAGE_TOO_LARGE,
                    f"the request is {len(body[0])} bytes; the limit is {self.limits.max_message_bytes}",
                )
            self.intake.submit(call, body[0], self._on_prepared)
        except BusError as exc:
            self._send(call, protocol.error_reply(exc, call.request_id))
        except Exception as exc:  # a bug must cost one request, not the agent
            log.exception("unexpected error handling a request")
            self._send(call, protocol.error_reply(internal_error(exc), call.request_id))

    def _on_prepared(self, call: ClientCall, prepared: Prepared | BusError) -> None:
        try:
            if isinstance(prepared, BusError):
                raise prepared
            call.encoding = prepared.encoding
            call.request_id = echoable(prepared.message.get("request_id"))
            self._dispatch(call, prepared)
        except BusError as exc:
            self._send(call, protocol.error_reply(exc, call.request_id))
        except Exception as exc:  # a bug must cost one request, not the agent
            log.exception("unexpected error handling a request")
            self._send(call, protocol.error_reply(internal_error(exc), call.request_id))

    def _dispatch(self, call: ClientCall, prepared: Prepared) -> None:
        action = prepared.message.get("action")
        if action is None:
            raise BusError(MISSING_FIELD, "action is required")
        handler = self.parts.handlers.get(action) if isinstance(action, str) else None
        # Unknown actions share one counter, so that garbage cannot grow the table.
        self.counters.by_action[action if handler is not None else "<unknown>"] += 1
        if handler is None:
            raise BusError(
                UNKNOWN_ACTION,
                f"unknown action {action!r:.100}; this {self.service.task} agent serves: "
                f"{', '.join(self.parts.handlers)}",
            )
        if not self.parts.shutdown.admits(action):
            raise BusError(SHUTTING_DOWN, "the agent is shutting down")
        if prepared.error is not None:
            raise prepared.error
        handler(call, prepared)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a voicebus service agent.")
    parser.add_argument("service", choices=sorted(SERVICES))
    args = parser.parse_args(argv)
    return exit_on_config_error(lambda: _serve(SERVICES[args.service]))


def _serve(service: Service) -> int:
    config = load_config()
    setup_logging(f"{service.task}-agent", config.logging.level)
    ServiceAgent(service, config).serve(stop_on_signals())
    return 0


if __name__ == "__main__":
    sys.exit(main())
