"""The shapes of the model manager's replies to an agent."""

from __future__ import annotations

from test_scheduler import Echo

from model_manager import replies
from model_manager.errors import INVALID_FIELD, BusError
from model_manager.jobs import Timed, Timing


def test_a_result_carries_the_engine_result_its_timing_and_model_or_the_error():
    timed = Timed(Echo(3), Timing(1.0, 2.0, 3.0, 4))
    ok = replies.result("j", timed, model="m")
    assert ok == {"type": "result", "job_id": "j", "ok": True,
                  "result": {"y": 3, "timing": {"prepare_ms": 1.0, "queue_ms": 2.0, "compute_ms": 3.0,
                                                "batch_size": 4}, "model": "m"}}
    failed = replies.result("j", BusError("timeout", "too late"))
    assert failed["ok"] is False and failed["error"]["code"] == "timeout"


def test_configured_says_ok_with_what_changed_or_the_refusal():
    applied = replies.configured("c", lambda: {"models": []})
    assert applied == {"type": "configured", "job_id": "c", "ok": True, "models": []}

    def refuse() -> dict:
        raise BusError(INVALID_FIELD, "max_batch_size must be at least 1")

    refused = replies.configured("c", refuse)
    assert refused["ok"] is False and refused["error"]["code"] == INVALID_FIELD


def test_an_unexpected_failure_is_answered_in_the_reply_type_when_there_is_one():
    failure = replies.failed("stats", "s1", ZeroDivisionError("a bug"))
    assert failure is not None and failure["type"] == "stats" and failure["error"]["code"] == "internal_error"
    assert "ZeroDivisionError: a bug" in failure["error"]["message"]
    assert replies.failed("infer", "j", ValueError("x"))["type"] == "result"  # type: ignore[index]
    assert replies.failed("cancel", "j", ValueError("x")) is None  # a cancel has no reply
    assert replies.failed("stats", None, ValueError("x")) is None  # nothing to answer it by
