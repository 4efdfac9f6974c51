"""The control actions on the wire: `health`, `voices`, `stats` and `configure`.

`health` and `voices` are answered at once, from the backend's view of the model managers.
`stats` and `configure` ask every live model manager and gather their answers; the replies
themselves are built in agents/control.py. Contract:
- every call gets exactly one reply, through `send`: once each manager asked has answered,
  or at the call's deadline (`tick`) with the answers that came by then; at once, with the
  agent's own figures only, when no manager is alive to ask (`configure` is then refused
  with model_unavailable before anything is sent);
- an answer from a manager that was not asked, or for a call already answered, is ignored;
- a call whose client hung up (`client_gone`) is forgotten: no reply could reach it;
- `waiting()` says whether a client still waits for one (the agent answers them before it stops).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from agents.control import (
    ControlCall,
    ModelManagerView,
    configure_message,
    control_reply,
    health_reply,
    voices_reply,
)
from agents.intake import Prepared
from agents.sinks import ClientCall, Send
from model_manager import protocol
from model_manager.errors import MODEL_UNAVAILABLE, BusError

#: How long `stats` and `configure` wait for the model managers' answers.
CONTROL_TIMEOUT_S = 2.0


class Managers(Protocol):
    """What the control actions need of the backend (agents/backend.py)."""

    @property
    def alive(self) -> bool: ...

    def view(self) -> ModelManagerView: ...

    def broadcast(self, message: dict[str, Any]) -> list[bytes]:
        """Send `message` to every live manager; the identities of those it reached."""
        ...


class ControlActions:
    def __init__(self, task: str, managers: Managers, send: Send, figures: Callable[[], dict[str, Any]],
                 stopping: Callable[[], bool], timeout_s: float = CONTROL_TIMEOUT_S) -> None:
        self.task = task
        self.managers = managers
        self._send = send
        #: The agent's own numbers, which every `stats` and `configure` reply is built with.
        self._figures = figures
        self._stopping = stopping
        self.timeout_s = timeout_s
        self._pending: dict[str, ControlCall] = {}  # by the job_id the managers answer with

    # --- the actions ----------------------------------------------------------------------

    def health(self, call: ClientCall, _prepared: Prepared) -> None:
        self._send(call, health_reply(self.task, self.managers.view(), self._stopping()))

    def voices(self, call: ClientCall, _prepared: Prepared) -> None:
        view = self.managers.view()
        if not view.models(self.task):
            raise BusError(MODEL_UNAVAILABLE, "no model manager has registered yet; retry shortly")
        self._send(call, voices_reply(self.task, view))

    def stats(self, call: ClientCall, _prepared: Prepared) -> None:
        self._ask_managers(ControlCall(call, "stats", time.monotonic() + self.timeout_s), {"type": "stats"})

    def configure(self, call: ClientCall, prepared: Prepared) -> None:
        message = configure_message(self.task, "", prepared.message)
        if not self.managers.alive:
            raise BusError(MODEL_UNAVAILABLE, "no model manager is alive to take the new settings")
        self._ask_managers(ControlCall(call, "configure", time.monotonic() + self.timeout_s), message)

    # --- the managers' answers ------------------------------------------------------------

    def on_answer(self, identity: bytes, answer: dict[str, Any]) -> None:
        """A manager's "stats" or "configured" message."""
        job_id = answer.get("job_id", "")
        pending = self._pending.get(job_id)
        if pending is None or identity not in pending.waiting:
            return
        pending.waiting.discard(identity)
        pending.answers.append(answer)
        if not pending.waiting:
            del self._pending[job_id]
            self._reply(pending)

    def tick(self, now: float) -> None:
        for job_id in [j for j, c in self._pending.items() if c.deadline <= now]:
            self._reply(self._pending.pop(job_id))

    def client_gone(self, routing_id: bytes) -> None:
        for job_id in [j for j, c in self._pending.items() if c.call.routing_id == routing_id]:
            del self._pending[job_id]

    def waiting(self) -> bool:
        return bool(self._pending)

    def _ask_managers(self, pending: ControlCall, message: dict[str, Any]) -> None:
        job_id = uuid.uuid4().hex
        pending.waiting = set(self.managers.broadcast({**message, "job_id": job_id}))
        if not pending.waiting:  # none alive: the agent's own figures, without waiting
            self._reply(pending)
            return
        self._pending[job_id] = pending

    def _reply(self, pending: ControlCall) -> None:
        figures = self._figures()
        try:
            reply = control_reply(self.task, pending, figures)
        except BusError as exc:
            reply = protocol.error_reply(exc)
        self._send(pending.call, reply)
