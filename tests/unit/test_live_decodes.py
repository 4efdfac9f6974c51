"""Live decodes as jobs and their answers as typed records (agents/live/decodes.py), and the
sink that hands a decode's outcome to its stream unrendered (agents/sinks.py)."""

from __future__ import annotations

import numpy as np

from agents.live.decodes import FINAL_PRIORITY, PARTIAL_PRIORITY, Decoded, DecodeJob, DecodeOutcome
from agents.live.session import DecodeRequest
from agents.live.settings import LiveSettings
from agents.sinks import ClientCall, ClientReply, DecodeReply, Entry, Outcome
from model_manager.errors import TIMEOUT, BusError


def request(final: bool) -> DecodeRequest:
    return DecodeRequest(7, 0, final, np.zeros(1600, np.float32), 0.0, 0.1)


def test_a_decode_becomes_a_job_with_its_priority_timeout_and_target():
    settings = LiveSettings(request_timeout_ms=60_000, partial_timeout_ms=5_000, final_target_ms=300,
                            partial_target_ms=500)
    fields = {"model_pref": "whisper-tiny.en", "language": "en"}
    final = DecodeJob.of(request(final=True), fields, settings)
    partial = DecodeJob.of(request(final=False), fields, settings)
    assert (final.priority, final.timeout_ms, final.target_ms) == (FINAL_PRIORITY, 60_000, 300)
    assert (partial.priority, partial.timeout_ms, partial.target_ms) == (PARTIAL_PRIORITY, 5_000, 500)
    assert final.decode_id == 7 and final.final and not partial.final
    assert sorted(final.request) == ["audio", "language"]  # model_pref goes in the job's message
    assert final.job_id != partial.job_id


def test_a_result_is_read_into_a_decoded_record():
    result = {"text": " Hello there.", "language": "en", "truncated": False,
              "timing": {"prepare_ms": 1.0, "queue_ms": 2.0, "compute_ms": 30.0, "batch_size": 3}}
    assert Decoded.of(result) == Decoded(" Hello there.", "en", 3)
    assert Decoded.of({"text": "hi", "language": None}) == Decoded("hi")
    assert Decoded.of({"timing": {"batch_size": "4"}}) == Decoded("")


def test_a_decode_sink_hands_over_the_outcome_typed_and_never_renders_it():
    taken: list[DecodeOutcome] = []
    sink = DecodeReply(taken.append, retries=True)

    def render(outcome: Outcome) -> Entry:
        raise AssertionError("a live decode's outcome is not rendered")

    sink.take({"text": "hi", "language": "en", "timing": {"batch_size": 2}}, render)
    timeout = BusError(TIMEOUT, "no result within the request timeout")
    sink.take(timeout, render)
    assert taken == [Decoded("hi", "en", 2), timeout]
    assert sink.owner is None and sink.retries


def test_a_client_sink_takes_its_outcome_rendered():
    sent: list[tuple[ClientCall, Entry]] = []
    call = ClientCall([b"client", b""], None)
    ClientReply(call, lambda c, entry: sent.append((c, entry))).take(
        {"text": "hi"}, lambda outcome: {"status": "success", "rendered": outcome})
    assert sent == [(call, {"status": "success", "rendered": {"text": "hi"}})]
