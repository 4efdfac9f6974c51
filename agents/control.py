"""The control actions: `health`, `stats`, `configure` and `voices`, and the agent's own
counters. Replies are built here from what the agent knows and what the model manager said;
the agent only moves the messages."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from agents.options import required
from agents.sinks import ClientCall
from model_manager.errors import INTERNAL, INVALID_FIELD, MODEL_UNAVAILABLE, BusError
from model_manager.protocol import PROTOCOL_VERSION


@dataclass
class AgentCounters:
    """What the agent itself has seen, for `stats`."""

    by_action: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    #: Jobs dropped before they ran because their client's connection closed.
    dropped_for_gone_clients: int = 0


@dataclass
class ControlCall:
    """A `stats` or `configure` call waiting for the model manager's answer."""

    call: ClientCall
    kind: str  # "stats" | "configure"
    deadline: float


@dataclass
class ModelManagerView:
    """The model manager as the agent last heard of it (its last pong)."""

    alive: bool
    pong: dict[str, Any]

    def models(self, task: str) -> list[dict[str, Any]]:
        known = [m for m in self.pong.get("models", []) if m.get("task") == task]
        # A dead model manager's models stay listed, so a dashboard sees which ones went away.
        return [{**m, "ready": self.alive and bool(m.get("ready"))} for m in known]


def health_reply(task: str, view: ModelManagerView, stopping: bool) -> dict[str, Any]:
    pong = view.pong if view.alive else {}
    state = ("down" if not view.alive else "loading" if pong.get("loading")
             else "error" if pong.get("error") else "up")
    models = view.models(task)
    return {
        "status": "success",
        "service": task,
        "protocol": PROTOCOL_VERSION,
        "live": True,
        "ready": view.alive and bool(pong.get("ready")) and any(m["ready"] for m in models) and not stopping,
        "model_manager": state,
        "model_manager_error": pong.get("error"),
        "models": models,
    }


def voices_reply(task: str, view: ModelManagerView) -> dict[str, Any]:
    return {"status": "success", "voices": {m["name"]: m.get("voices", []) for m in view.models(task)}}


def agent_stats(task: str, counters: AgentCounters, in_flight: int, results_stored: int,
                open_streams: int) -> dict[str, Any]:
    return {
        "service": task,
        "requests_by_action": dict(counters.by_action),
        "errors_by_code": dict(counters.errors),
        "in_flight": in_flight,
        "results_stored": results_stored,
        "open_streams": open_streams,
        "dropped_for_gone_clients": counters.dropped_for_gone_clients,
    }


def configure_message(task: str, job_id: str, message: dict[str, Any]) -> dict[str, Any]:
    """The model manager's "configure" for a client's `configure`: checked here, so a bad
    request is answered at once; it retunes only this agent's task."""
    settings = required(message, "settings")
    if not isinstance(settings, dict):
        raise BusError(INVALID_FIELD, "settings must be a map of batch_processing_config keys")
    model = message.get("model")
    if model is not None and not isinstance(model, str):
        raise BusError(INVALID_FIELD, f"model must be a model name (a string), got {type(model).__name__}")
    return {"type": "configure", "job_id": job_id, "task": task, "model": model, "settings": settings}


def control_reply(task: str, pending: ControlCall, answer: dict[str, Any] | None,
                  stats: dict[str, Any]) -> dict[str, Any]:
    """The client reply to a control call: from the model manager's `answer`, or from what
    the agent knows when none came in time (`answer` None)."""
    if pending.kind == "stats":
        if answer is None or answer.get("ok") is False:
            return {"status": "success", **stats, "models": [], "model_manager": "unavailable"}
        models = [m for m in answer.get("models", []) if m.get("task") == task]
        return {"status": "success", **stats, "models": models, "memory": answer.get("memory"),
                "workers": answer.get("workers")}
    if answer is None:
        raise BusError(MODEL_UNAVAILABLE, "the model manager did not confirm the new settings")
    if answer.get("ok"):
        return {"status": "success", "models": answer.get("models", [])}
    error = answer.get("error") or {}
    raise BusError(error.get("code", INTERNAL), error.get("message", ""))
