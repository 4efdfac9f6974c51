"""The agent's dispatch, pure: model managers by credit and liveness, jobs never lost or
answered twice (agents/managers.py, agents/dispatch.py), with an explicit clock."""

from __future__ import annotations

import pytest

from agents.dispatch import Dispatcher, resolve_model
from agents.managers import ManagerRegistry, Refused
from model_manager.errors import OVERLOADED, UNKNOWN_MODEL, BusError
from model_manager.link_protocol import (
    LINK_PROTOCOL,
    LIVENESS_S,
    Disconnect,
    Heartbeat,
    ModelOffer,
    Ready,
    decode,
    encode,
)

TINY, BASE, KOKORO = "whisper-tiny.en", "whisper-base", "kokoro-82m"


def ready(instance: str, *models: str, credit: int = 2, sizes: dict[str, int] | None = None) -> Ready:
    offers = tuple(ModelOffer(m, "tts" if m == KOKORO else "stt", credit,
                              {"num_parameters": (sizes or {}).get(m, 1)}) for m in models)
    return Ready(LINK_PROTOCOL, instance, "host-" + instance, offers)


def dispatcher(max_waiting: int = 8, model_wait_s: float = 5.0) -> Dispatcher:
    return Dispatcher(ManagerRegistry("stt", (TINY, BASE)), max_waiting, model_wait_s)


def test_jobs_go_to_the_manager_with_the_most_free_credit_and_never_beyond_it():
    d = dispatcher()
    d.registry.register(b"a", ready("a", TINY, credit=2), 0.0)
    d.registry.register(b"b", ready("b", TINY, credit=3), 0.0)
    for i in range(7):
        d.enqueue(f"j{i}", TINY, 0, 100.0)
    sent = d.assignments(0.0)
    assert [m.identity for _, m in sent].count(b"a") == 2
    assert [m.identity for _, m in sent].count(b"b") == 3
    assert d.waiting(TINY) == 2 and d.demand(TINY) == 7
    # An answer frees one credit: the oldest waiting job goes next.
    first_at_a = next(job for job, m in sent if m.identity == b"a")
    assert d.settle(first_at_a, b"a")
    assert [(job, m.identity) for job, m in d.assignments(0.1)] == [("j5", b"a")]


def test_urgent_jobs_go_first_and_a_full_wait_line_is_overloaded():
    d = dispatcher(max_waiting=3)
    d.enqueue("bulk", TINY, 1, 100.0)
    d.enqueue("interactive", TINY, 0, 100.0)
    d.enqueue("final", TINY, -1, 100.0)
    with pytest.raises(BusError) as full:
        d.enqueue("one-more", TINY, 0, 100.0)
    assert full.value.code == OVERLOADED and full.value.retry_after_ms
    d.registry.register(b"a", ready("a", TINY, credit=3), 0.0)
    assert [job for job, _ in d.assignments(0.0)] == ["final", "interactive", "bulk"]


def test_a_dead_managers_jobs_go_to_another_and_its_late_answer_is_a_duplicate():
    d = dispatcher()
    d.registry.register(b"a", ready("a", TINY), 0.0)
    d.enqueue("j1", TINY, 0, 100.0)
    assert [m.identity for _, m in d.assignments(0.0)] == [b"a"]
    d.registry.register(b"b", ready("b", TINY), 1.0)
    d.registry.heard(b"b", LIVENESS_S + 0.5)
    dead = d.registry.expire(LIVENESS_S + 0.5)
    assert [(r.identity, jobs) for r, jobs in dead] == [(b"a", ["j1"])]
    assert d.requeue(["j1"]) == ["j1"]
    assert [(job, m.identity) for job, m in d.assignments(LIVENESS_S + 0.5)] == [("j1", b"b")]
    assert not d.settle("j1", b"a")  # the dead one's late answer: dropped by job id
    assert d.settle("j1", b"b")
    assert not d.settle("j1", b"b")  # and nothing is answered twice


def test_a_job_turned_away_unrun_keeps_its_place_in_line():
    d = dispatcher()
    d.registry.register(b"a", ready("a", TINY, credit=1), 0.0)
    d.enqueue("old", TINY, 0, 100.0)
    d.assignments(0.0)
    d.enqueue("young", TINY, 0, 100.0)
    assert d.bounce("old", b"a")
    assert not d.bounce("old", b"a")  # it does not hold it any more
    assert [job for job, _ in d.assignments(0.1)] == ["old"]


def test_a_draining_manager_gets_no_new_work():
    d = dispatcher()
    d.registry.register(b"a", ready("a", TINY), 0.0)
    d.registry.heartbeat(b"a", Heartbeat(draining=True), 0.5)
    d.enqueue("j1", TINY, 0, 100.0)
    assert d.assignments(0.5) == []
    assert d.registry.remove(b"a") == []


def test_a_job_waits_for_a_manager_holding_its_model_then_gives_up():
    d = dispatcher(model_wait_s=5.0)
    d.registry.register(b"a", ready("a", TINY), 0.0)
    d.enqueue("base-job", BASE, 0, 100.0)
    assert d.assignments(0.0) == [] and d.expired(0.0) == []
    assert d.expired(4.9) == []
    d.registry.heard(b"a", 4.9)
    d.registry.register(b"b", ready("b", BASE), 4.9)  # a manager holding it joins in time
    assert [(job, m.identity) for job, m in d.assignments(4.9)] == [("base-job", b"b")]
    d.enqueue("late", TINY, 0, 100.0)
    d.registry.managers.clear()
    assert d.expired(10.0) == []  # the wait bound counts from when no manager held it
    assert d.expired(15.0) == ["late"]


def test_cancel_finds_the_holder():
    d = dispatcher()
    d.registry.register(b"a", ready("a", TINY), 0.0)
    d.enqueue("j1", TINY, 0, 100.0)
    d.enqueue("j2", BASE, 0, 100.0)
    d.assignments(0.0)
    assert d.cancel(["j1", "j2"]) == {b"a": ["j1"]}
    assert d.demand(TINY) == d.demand(BASE) == 0


def test_ready_is_refused_for_another_protocol_or_an_unknown_model():
    registry = ManagerRegistry("stt", (TINY,))
    with pytest.raises(Refused, match="protocol"):
        registry.register(b"a", Ready(LINK_PROTOCOL + 1, "a", "h", ()), 0.0)
    with pytest.raises(Refused, match="whisper-large"):
        registry.register(b"a", ready("a", "whisper-large"), 0.0)
    # Models of the other task are the other agent's business.
    registry.register(b"a", ready("a", TINY, KOKORO), 0.0)
    assert registry.managers[b"a"].credit == {TINY: 2}


def test_a_restarted_manager_behind_the_same_identity_gives_back_its_jobs():
    d = dispatcher()
    d.registry.register(b"a", ready("first", TINY), 0.0)
    d.enqueue("j1", TINY, 0, 100.0)
    d.assignments(0.0)
    assert d.registry.register(b"a", ready("first", TINY), 0.5) == []  # READY again: it kept them
    assert d.registry.register(b"a", ready("second", TINY), 1.0) == ["j1"]


def test_model_pref_resolves_against_what_managers_hold():
    registry = ManagerRegistry("stt", (TINY, BASE))
    assert resolve_model(None, "stt", (TINY, BASE), registry) == TINY
    registry.register(b"a", ready("a", BASE, sizes={BASE: 74}), 0.0)
    assert resolve_model(None, "stt", (TINY, BASE), registry) == BASE  # the first one served
    registry.register(b"b", ready("b", TINY, sizes={TINY: 39}), 0.0)
    assert resolve_model("fast", "stt", (TINY, BASE), registry) == TINY
    assert resolve_model("quality", "stt", (TINY, BASE), registry) == BASE
    assert resolve_model(BASE, "stt", (TINY, BASE), registry) == BASE
    with pytest.raises(BusError) as unknown:
        resolve_model("whisper-huge", "stt", (TINY, BASE), registry)
    assert unknown.value.code == UNKNOWN_MODEL


def test_control_messages_round_trip_and_garbage_is_refused():
    for message in (ready("a", TINY), Heartbeat({TINY: 4}, True, 10), Disconnect("bye", True)):
        assert decode(encode(message)) == message
    assert decode(encode({"type": "result", "job_id": "x", "ok": True})) == {"type": "result", "job_id": "x",
                                                                               "ok": True}
    for frames in ([b"VBMM1", b"\x80"], [b"VBMM2"], [b"VBMM2", b"\xc1"], [b"VBMM2", b"\x91\x01"]):
        with pytest.raises(ValueError):
            decode(frames)
    with pytest.raises(ValueError, match="malformed ready"):
        decode(encode({"type": "ready", "protocol": 2}))
