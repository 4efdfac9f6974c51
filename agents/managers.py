"""The model managers an agent knows: who is alive, what each holds, and its credit.

Pure bookkeeping with an explicit clock, tested without sockets (tests/unit/test_dispatch.py).

Contract:
- a manager counts once it has said READY (its models are loaded) with this agent's
  protocol version and models this agent knows; anything else is refused, saying why;
- it is alive while it is heard from within `LIVENESS_S`; `expire` removes the silent ones
  and hands back the jobs they held, to be sent elsewhere;
- a job is held by at most one manager (`assign`), never beyond that manager's credit for
  the job's model; `settle` frees it, and tells whether the answer came from its holder: an
  answer from anyone else (a manager taken for dead, a resent copy) is a duplicate.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from model_manager.link_protocol import LINK_PROTOCOL, LIVENESS_S, Heartbeat, ModelOffer, Ready


@dataclass
class ManagerRecord:
    identity: bytes
    ready: Ready
    last_seen: float
    #: Credit by model name, from READY and later heartbeats; only this agent's task.
    credit: dict[str, int]
    draining: bool = False
    free_memory_bytes: int = 0
    #: Jobs this manager holds, by model.
    held: Counter[str] = field(default_factory=Counter)

    @property
    def instance(self) -> str:
        return self.ready.instance

    def free_credit(self, model: str) -> int:
        if self.draining:
            return 0
        return self.credit.get(model, 0) - self.held[model]

    def describe(self, now: float) -> dict[str, object]:
        """The manager as `stats` and the monitor page show it."""
        return {
            "instance": self.instance,
            "host": self.ready.host,
            "models": sorted(self.credit),
            "credit": dict(self.credit),
            "in_flight": sum(self.held.values()),
            "draining": self.draining,
            "last_heartbeat_s": round(max(0.0, now - self.last_seen), 3),
            "free_memory_bytes": self.free_memory_bytes,
        }


class Refused(Exception):
    """A READY this agent cannot take; the message says why (and goes to the manager)."""


class ManagerRegistry:
    def __init__(self, task: str, configured_models: tuple[str, ...]) -> None:
        self.task = task
        self.configured = configured_models
        self.managers: dict[bytes, ManagerRecord] = {}
        #: job_id -> (holder identity, model)
        self._holder: dict[str, tuple[bytes, str]] = {}
        #: Every model of this task ever offered, with its description: what `fast`,
        #: `quality` and `health` go by while no manager holding it is alive.
        self.seen: dict[str, ModelOffer] = {}

    # --- membership -----------------------------------------------------------------------

    def register(self, identity: bytes, ready: Ready, now: float) -> list[str]:
        """Take a READY. Returns the jobs to send again: those a previous instance behind
        the same identity held (a restarted manager never saw them). Raises Refused."""
        if ready.protocol != LINK_PROTOCOL:
            raise Refused(f"backend protocol {ready.protocol!r}; this agent speaks {LINK_PROTOCOL}")
        mine = [offer for offer in ready.models if offer.task == self.task]
        unknown = [offer.name for offer in mine if offer.name not in self.configured]
        if unknown:
            raise Refused(f"offers {', '.join(unknown)}, which this agent's configuration does not list "
                          f"(its {self.task} models: {', '.join(self.configured) or 'none'})")
        orphans: list[str] = []
        previous = self.managers.get(identity)
        if previous is not None and previous.instance != ready.instance:
            orphans = self._forget(identity)
        elif previous is not None:  # READY again from the same instance: it kept its jobs
            previous.ready, previous.last_seen = ready, now
            previous.credit = {offer.name: offer.credit for offer in mine}
            return orphans
        for offer in mine:
            self.seen[offer.name] = offer
        self.managers[identity] = ManagerRecord(
            identity, ready, now, {offer.name: offer.credit for offer in mine},
            free_memory_bytes=ready.free_memory_bytes,
        )
        return orphans

    def heard(self, identity: bytes, now: float) -> bool:
        """A sign of life; False when the identity is not registered."""
        record = self.managers.get(identity)
        if record is None:
            return False
        record.last_seen = now
        return True

    def heartbeat(self, identity: bytes, beat: Heartbeat, now: float) -> bool:
        record = self.managers.get(identity)
        if record is None:
            return False
        record.last_seen = now
        record.draining = beat.draining
        record.free_memory_bytes = beat.free_memory_bytes
        if beat.credit is not None:
            record.credit = {name: n for name, n in beat.credit.items() if name in record.credit}
        return True

    def remove(self, identity: bytes) -> list[str]:
        """A manager that said DISCONNECT: the jobs it still held, to send elsewhere."""
        return self._forget(identity)

    def expire(self, now: float) -> list[tuple[ManagerRecord, list[str]]]:
        """Remove the managers silent for LIVENESS_S, with the jobs each held."""
        dead = [r for r in self.managers.values() if now - r.last_seen >= LIVENESS_S]
        return [(record, self._forget(record.identity)) for record in dead]

    def _forget(self, identity: bytes) -> list[str]:
        self.managers.pop(identity, None)
        jobs = [job_id for job_id, (holder, _) in self._holder.items() if holder == identity]
        for job_id in jobs:
            del self._holder[job_id]
        return jobs

    # --- jobs -----------------------------------------------------------------------------

    def pick(self, model: str) -> ManagerRecord | None:
        """The live manager holding `model` with the most free credit, if any has some."""
        best = max((r for r in self.managers.values() if r.free_credit(model) > 0),
                   key=lambda r: r.free_credit(model), default=None)
        return best

    def assign(self, record: ManagerRecord, job_id: str, model: str) -> None:
        self._holder[job_id] = (record.identity, model)
        record.held[model] += 1

    def settle(self, job_id: str, identity: bytes | None = None) -> bool:
        """Free `job_id`'s credit. True when `identity` (None: any) held it."""
        holder = self._holder.get(job_id)
        if holder is None or (identity is not None and holder[0] != identity):
            return False
        del self._holder[job_id]
        record = self.managers.get(holder[0])
        if record is not None:
            record.held[holder[1]] -= 1
        return True

    def holder(self, job_id: str) -> bytes | None:
        held = self._holder.get(job_id)
        return None if held is None else held[0]

    # --- views ----------------------------------------------------------------------------

    def serving(self, model: str) -> int:
        """Live managers holding `model` (draining ones included: they still answer)."""
        return sum(1 for r in self.managers.values() if model in r.credit)

    def in_flight(self, model: str) -> int:
        return sum(r.held[model] for r in self.managers.values())

    def live_models(self) -> set[str]:
        return {name for r in self.managers.values() if not r.draining for name in r.credit}
