"""The backend link between agents and model managers, as written in docs/protocol.md §6.

Model managers connect out: each agent binds a ROUTER (its backend port) and every model
manager connects a DEALER to every agent it serves (ZeroMQ RFC 7, Majordomo, with the
Paranoid Pirate heartbeats). Every message is two frames, `LINK_VERSION` then one msgpack
map whose "type" names it; numpy arrays travel as in `protocol.pack`.

The control messages are typed records here; "infer", "result", "cancel", "stats" and
"configure" keep the shape of the single-host protocol (maps), since their fields are the
engine's request and result.

| type       | direction     | record / fields                                                |
|------------|---------------|----------------------------------------------------------------|
| ready      | manager→agent | `Ready`: register, once its models are loaded                  |
| heartbeat  | both, 1 s     | `Heartbeat`: from a manager, its credit and whether it drains  |
| disconnect | both          | `Disconnect`: a manager leaving, or an agent refusing/forgetting it |
| infer      | agent→manager | job_id, task, model_pref, request, priority, timeout_ms, target_ms |
| result     | manager→agent | job_id, ok, result or error                                    |
| cancel     | agent→manager | job_ids                                                        |
| stats / configure | agent→manager | as on one host, answered by "stats" / "configured"     |
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from model_manager import protocol

#: The frame that starts every backend message; another one is dropped (and logged).
LINK_VERSION = b"VBMM2"
#: The backend protocol version a manager states in READY; an agent refuses any other.
LINK_PROTOCOL = 2
#: Heartbeats go both ways this often; a peer silent for LIVENESS_INTERVALS of them is dead.
HEARTBEAT_INTERVAL_S = protocol.PING_INTERVAL_S
LIVENESS_INTERVALS = protocol.LIVENESS_INTERVALS
LIVENESS_S = HEARTBEAT_INTERVAL_S * LIVENESS_INTERVALS


@dataclass(frozen=True)
class ModelOffer:
    """One model a manager holds: the engine's description and the credit it gives."""

    name: str
    task: str
    #: Jobs of this model the manager takes at once (queued and running), per agent.
    credit: int
    #: The engine's `describe()`: device, num_parameters, voices...
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Ready:
    protocol: int
    #: Changes with every start of a manager: a new instance holds none of an agent's jobs.
    instance: str
    host: str
    models: tuple[ModelOffer, ...]
    free_memory_bytes: int = 0


@dataclass(frozen=True)
class Heartbeat:
    #: Credit by model name, when it changed (a reconfigure); None: as in READY.
    credit: dict[str, int] | None = None
    #: A draining manager (SIGTERM) gets no new work; it finishes what it holds.
    draining: bool = False
    free_memory_bytes: int = 0


@dataclass(frozen=True)
class Disconnect:
    reason: str = ""
    #: From an agent: True when it only does not know the manager (it restarted, or took it
    #: for dead), which should say READY again; False when it refuses it for good.
    again: bool = False


ControlMessage = Ready | Heartbeat | Disconnect


def encode(message: ControlMessage | dict[str, Any]) -> list[bytes]:
    """The frames of one backend message (a control record, or a map with its "type")."""
    if isinstance(message, dict):
        return [LINK_VERSION, protocol.pack(message)]
    body = {"type": type(message).__name__.lower(), **asdict(message)}
    return [LINK_VERSION, protocol.pack(body)]


def decode(frames: list[bytes]) -> ControlMessage | dict[str, Any]:
    """One backend message from its frames; ValueError, saying why, for anything else."""
    if len(frames) != 2 or frames[0] != LINK_VERSION:
        raise ValueError(f"not a {LINK_VERSION.decode()} message ({len(frames)} frames)")
    try:
        body = protocol.unpack(frames[1])
    except Exception as exc:
        raise ValueError(f"undecodable body: {type(exc).__name__}") from None
    if not isinstance(body, dict) or not isinstance(body.get("type"), str):
        raise ValueError("the body is not a map with a type")
    kind = body.pop("type")
    try:
        if kind == "ready":
            offers = tuple(ModelOffer(**offer) for offer in body.pop("models"))
            return Ready(models=offers, **body)
        if kind == "heartbeat":
            return Heartbeat(**body)
        if kind == "disconnect":
            return Disconnect(**body)
    except (TypeError, KeyError) as exc:
        raise ValueError(f"malformed {kind}: {exc}") from None
    body["type"] = kind
    return body
