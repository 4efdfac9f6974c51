"""The control actions' replies: `health`, `stats`, `configure` and `voices`, and the agent's
own counters. Replies are built here, pure, from what the agent knows and what the model
managers said; agents/control_actions.py asks the managers and sends the replies."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from agents.options import required
from agents.sinks import ClientCall
from model_manager.errors import INTERNAL, INVALID_FIELD, MODEL_UNAVAILABLE, UNKNOWN_MODEL, BusError
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
    """A `stats` or `configure` call waiting for the model managers' answers."""

    call: ClientCall
    kind: Literal["stats", "configure"]
    deadline: float
    #: The managers asked that have not answered yet.
    waiting: set[bytes] = field(default_factory=set)
    answers: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ModelManagerView:
    """The model managers as the agent knows them: `alive` when one is, and `pong` the
    summary agents/backend.py makes of them (ready, models, each with `ready`)."""

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


def control_reply(task: str, pending: ControlCall, stats: dict[str, Any]) -> dict[str, Any]:
    """The client reply to a control call, from the managers' answers (none when none was
    alive or none answered in time) and what the agent knows (`stats`)."""
    answers = [a for a in pending.answers if a.get("ok") is not False]
    if pending.kind == "stats":
        if not answers:
            return {"status": "success", **stats, "models": [], "model_manager": "unavailable"}
        models = [{**m, "instance": a.get("instance")} for a in answers for m in a.get("models", [])
                  if m.get("task") == task]
        workers = {k: sum((a.get("workers") or {}).get(k, 0) for a in answers)
                   for k in ("total", "ready", "busy")}
        return {"status": "success", **stats, "models": models, "memory": answers[0].get("memory"),
                "workers": workers}
    failed = [a.get("error") or {} for a in pending.answers if a.get("ok") is False]
    # A manager that does not hold the named model says unknown_model: fine if another does.
    serious = [e for e in failed if e.get("code") != UNKNOWN_MODEL or not answers]
    if serious:
        raise BusError(serious[0].get("code", INTERNAL), serious[0].get("message", ""))
    if not answers:
        raise BusError(MODEL_UNAVAILABLE, "no model manager confirmed the new settings")
    return {"status": "success", "models": [m for a in answers for m in a.get("models", [])]}
