"""The control actions (agents/control_actions.py) with stand-in model managers: a call
that asks every manager is answered once, when all have answered or at its deadline."""

from __future__ import annotations

import time
from typing import Any

import pytest

from agents.control import ModelManagerView
from agents.control_actions import ControlActions
from agents.intake import Prepared
from agents.sinks import ClientCall
from model_manager.errors import BusError
from model_manager.protocol import Encoding

MODEL = {"name": "kokoro-82m", "task": "tts", "ready": True, "voices": ["af_heart"]}


class Managers:
    def __init__(self, identities: list[bytes]) -> None:
        self.identities = identities
        self.sent: list[dict[str, Any]] = []

    @property
    def alive(self) -> bool:
        return bool(self.identities)

    def view(self) -> ModelManagerView:
        models = [MODEL] if self.identities else []
        return ModelManagerView(self.alive, {"ready": self.alive, "models": models})

    def broadcast(self, message: dict[str, Any]) -> list[bytes]:
        self.sent.append(message)
        return list(self.identities)


class Setup:
    def __init__(self, identities: list[bytes], stopping: bool = False) -> None:
        self.managers = Managers(identities)
        self.replies: list[tuple[bytes, dict[str, Any]]] = []
        self.control = ControlActions("tts", self.managers, self.send, lambda: {"in_flight": 3},
                                      lambda: stopping)

    def send(self, call: ClientCall, reply: dict[str, Any]) -> None:
        self.replies.append((call.routing_id, reply))

    def answer(self, identity: bytes, **fields: Any) -> None:
        self.control.on_answer(identity, {"job_id": self.managers.sent[-1]["job_id"], **fields})


def call(routing_id: bytes = b"c1") -> ClientCall:
    return ClientCall([routing_id, b""], Encoding.JSON)


def prepared(**message: Any) -> Prepared:
    return Prepared(message, Encoding.JSON)


def manager_stats(workers: int) -> dict[str, Any]:
    return {"ok": True, "models": [MODEL], "workers": {"total": workers, "ready": workers, "busy": 0}}


def test_health_and_voices_are_answered_at_once_from_the_managers_view():
    setup = Setup([b"m1"], stopping=True)
    setup.control.health(call(), prepared(action="health"))
    setup.control.voices(call(), prepared(action="voices"))
    (_, health), (_, voices) = setup.replies
    assert health["model_manager"] == "up" and health["ready"] is False  # stopping: not ready
    assert voices["voices"] == {"kokoro-82m": ["af_heart"]}
    with pytest.raises(BusError) as refused:
        Setup([]).control.voices(call(), prepared(action="voices"))
    assert refused.value.code == "model_unavailable"


def test_stats_waits_for_every_manager_asked_and_ignores_strangers():
    setup = Setup([b"m1", b"m2"])
    setup.control.stats(call(), prepared(action="stats"))
    assert setup.managers.sent[0]["type"] == "stats" and setup.control.waiting()
    setup.answer(b"m1", **manager_stats(1))
    setup.answer(b"m1", **manager_stats(5))  # a second answer from the same manager
    setup.answer(b"stranger", **manager_stats(5))
    assert setup.replies == []
    setup.answer(b"m2", **manager_stats(2))
    ((routing_id, reply),) = setup.replies
    assert routing_id == b"c1" and reply["in_flight"] == 3 and reply["workers"]["total"] == 3
    assert len(reply["models"]) == 2 and not setup.control.waiting()
    setup.answer(b"m2", **manager_stats(2))  # late: the call is answered already
    assert len(setup.replies) == 1


def test_stats_with_no_manager_alive_is_answered_at_once_with_the_agents_own_figures():
    setup = Setup([])
    setup.control.stats(call(), prepared(action="stats"))
    ((_, reply),) = setup.replies
    assert reply["model_manager"] == "unavailable" and reply["in_flight"] == 3


def test_a_call_is_answered_at_its_deadline_with_what_came():
    setup = Setup([b"m1", b"m2"])
    setup.control.stats(call(), prepared(action="stats"))
    setup.answer(b"m1", **manager_stats(1))
    setup.control.tick(time.monotonic())
    assert setup.replies == []
    setup.control.tick(time.monotonic() + setup.control.timeout_s + 1)
    ((_, reply),) = setup.replies
    assert reply["workers"]["total"] == 1 and not setup.control.waiting()


def test_the_call_of_a_client_that_hung_up_is_forgotten():
    setup = Setup([b"m1"])
    setup.control.stats(call(b"gone"), prepared(action="stats"))
    setup.control.client_gone(b"gone")
    assert not setup.control.waiting()
    setup.answer(b"m1", **manager_stats(1))
    setup.control.tick(time.monotonic() + 60)
    assert setup.replies == []


def test_configure_is_checked_before_any_manager_is_asked():
    setup = Setup([b"m1"])
    with pytest.raises(BusError) as bad:
        setup.control.configure(call(), prepared(action="configure", settings=[1]))
    assert bad.value.code == "invalid_field" and setup.managers.sent == []
    with pytest.raises(BusError) as nobody:
        Setup([]).control.configure(call(), prepared(action="configure", settings={"max_batch_size": 2}))
    assert nobody.value.code == "model_unavailable"
    setup.control.configure(call(), prepared(action="configure", settings={"max_batch_size": 2}))
    assert setup.managers.sent[0]["settings"] == {"max_batch_size": 2}
    setup.answer(b"m1", ok=False, error={"code": "invalid_field", "message": "no such key"})
    ((_, reply),) = setup.replies
    assert reply["status"] == "error" and reply["error"]["code"] == "invalid_field"
