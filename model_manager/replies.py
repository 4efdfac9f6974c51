"""The model manager's replies to an agent, in the link's map shape (docs/protocol.md §6): pure.

- `result`: the one "result" every "infer" gets: ok with the engine's result (its wire form,
  `timing` included) and the model that ran it, or not ok with the error.
- `stats`: the "stats" reply: the manager's figures under the request's job_id.
- `configured`: the "configure" reply: ok with the retuned models' snapshots, or not ok
  with the `BusError` that refused the settings (then none of them was applied).
- `failed`: the answer to a message whose handling failed unexpectedly: `internal_error`
  and the cause, in the reply type of the request, so the agent does not wait for its
  timeout; None for a message that has no reply or names no job_id.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from model_manager.errors import BusError, internal_error
from model_manager.jobs import Outcome

# The reply type of each request type that has one.
REPLY_TYPES = {"infer": "result", "stats": "stats", "configure": "configured"}


def result(job_id: str, outcome: Outcome, model: str | None = None) -> dict[str, Any]:
    if isinstance(outcome, BusError):
        return {"type": "result", "job_id": job_id, "ok": False, "error": outcome.to_wire()}
    return {"type": "result", "job_id": job_id, "ok": True, "result": {**outcome.to_wire(), "model": model}}


def stats(job_id: Any, figures: dict[str, Any]) -> dict[str, Any]:
    return {"type": "stats", "job_id": job_id, **figures}


def configured(job_id: Any, configure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Apply the settings (`configure`: ModelSet.configure on the message) and say how it went."""
    reply: dict[str, Any] = {"type": "configured", "job_id": job_id}
    try:
        reply.update(ok=True, **configure())
    except BusError as exc:
        reply.update(ok=False, error=exc.to_wire())
    return reply


def failed(kind: Any, job_id: Any, exc: Exception) -> dict[str, Any] | None:
    reply_type = REPLY_TYPES.get(kind)
    if reply_type is None or not isinstance(job_id, str):
        return None
    return {"type": reply_type, "job_id": job_id, "ok": False, "error": internal_error(exc).to_wire()}
