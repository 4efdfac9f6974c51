"""The agent side of live streams (agents/live/streams.py) with a fake host and an explicit
clock: delivery of events, close, cancel, hang-up, idle expiry, bounds and bad input. No
sockets and no model here; tests/bus/test_live_stt.py runs the same over real sockets."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from speech import SENTENCES, speak

from agents.live.decodes import PARTIAL_PRIORITY, Decoded
from agents.live.settings import LiveSettings
from agents.live.streams import LiveStreams
from agents.live.worker import Finished
from model_manager.errors import BusError


class Call:
    def __init__(self, routing_id: bytes = b"client") -> None:
        self.routing_id = routing_id


class FakeHost:
    def __init__(self) -> None:
        self.replies: list[tuple[Call, dict]] = []
        self.jobs: dict[str, tuple[dict, int, Any]] = {}
        self.dropped: list[str] = []

    def send(self, call: Call, reply: dict) -> None:
        self.replies.append((call, reply))

    def routing_id(self, call: Call) -> bytes:
        return call.routing_id

    def submit_decode(self, job_id, fields, request, priority, timeout_ms, target_ms, on_answer) -> None:
        self.jobs[job_id] = (request, priority, on_answer)

    def drop_jobs(self, job_ids: list[str]) -> None:
        self.dropped += job_ids
        for job_id in job_ids:
            self.jobs.pop(job_id, None)

    def answer_all(self, text: str = "hello there", priority: int | None = None) -> None:
        for job_id, (_, job_priority, _) in list(self.jobs.items()):
            if priority is not None and job_priority != priority:
                continue
            _, _, on_answer = self.jobs.pop(job_id)
            on_answer(Decoded(text, batch_size=2))

    def reply_to(self, call: Call) -> dict:
        return [r for c, r in self.replies if c is call][-1]


class InlineWorker:
    """OffThread's contract, run at once; `finished` is handed to on_worker by the test."""

    def __init__(self) -> None:
        self.finished: list[Finished] = []

    def submit(self, ticket: Any, work: Any, lane: int = 0) -> None:
        try:
            self.finished.append(Finished(ticket, work()))
        except Exception as exc:
            self.finished.append(Finished(ticket, exc))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def live():
    host, worker, clock = FakeHost(), InlineWorker(), Clock()
    settings = LiveSettings(max_open_streams=2, idle_timeout_s=5.0, hangup_grace_s=1.0, max_chunk_s=2.0,
                            max_audio_seconds=20.0)
    streams = LiveStreams(host, worker, settings, clock=clock)
    return streams, host, worker, clock


def run_worker(streams: LiveStreams, worker: InlineWorker, clock: Clock) -> None:
    finished, worker.finished = worker.finished, []
    streams.on_worker(finished, clock.now)


def send(streams, worker, clock, stream_id: str, audio: np.ndarray, call: Call | None = None) -> dict:
    call = call or Call()
    streams.audio(call, {"audio_data": audio.tolist()}, stream_id, clock.now)
    run_worker(streams, worker, clock)
    return streams.host.reply_to(call)


def speech_audio() -> np.ndarray:
    silence = np.zeros(8000, dtype=np.float32)
    return np.concatenate([silence, speak(SENTENCES[0]), silence, silence])


def test_events_reach_the_caller_and_close_answers_with_the_final(live):
    streams, host, worker, clock = live
    streams.open(Call(), {}, "s", clock.now)
    audio, events = speech_audio(), []
    for i in range(0, len(audio), 1600):
        clock.now += 0.1
        reply = send(streams, worker, clock, "s", audio[i : i + 1600])
        assert reply["status"] == "success" and reply["done"] is False
        events += reply["events"]
        if i < 16000 * 2:
            host.answer_all("The quick brown fox", PARTIAL_PRIORITY)  # partials while it speaks
    assert [e["type"] for e in events][:2] == ["speech_started", "partial"]
    assert events[-1]["type"] == "speech_ended"
    assert len(host.jobs) == 1  # the final's decode: its own, or the last partial's
    closer = Call()
    streams.close(closer, "s", clock.now)
    run_worker(streams, worker, clock)
    assert not [r for c, r in host.replies if c is closer]  # waits for the final
    host.answer_all("The quick brown fox jumps over the lazy dog.")
    reply = host.reply_to(closer)
    assert reply["done"] is True
    assert [(e["type"], e["text"]) for e in reply["events"]] == [
        ("final", "The quick brown fox jumps over the lazy dog.")]
    stats = streams.stats()
    assert stats["open_streams"] == 0 and stats["ended_by"] == {"stream_close": 1}
    assert 0 < sum(stats["decode_batch_size_histogram"].values()) <= sum(stats["decodes"].values())
    with pytest.raises(BusError, match="has ended"):
        streams.audio(Call(), {"audio_data": [0.0]}, "s", clock.now)


def test_a_waiting_next_event_gets_events_first_and_times_out_empty(live):
    streams, host, worker, clock = live
    streams.open(Call(), {}, "s", clock.now)
    reader = Call(b"reader")
    streams.next_event(reader, {"timeout_ms": 500}, "s", clock.now)
    with pytest.raises(BusError, match="already waiting"):
        streams.next_event(Call(), {}, "s", clock.now)
    reply = send(streams, worker, clock, "s", speech_audio()[:16000 * 2])
    assert reply["events"] == []  # the reader took them
    assert [e["type"] for e in host.reply_to(reader)["events"]] == ["speech_started"]
    idle_reader = Call(b"reader")
    streams.next_event(idle_reader, {"timeout_ms": 500}, "s", clock.now)
    clock.now += 0.6
    streams.tick(clock.now)
    assert host.reply_to(idle_reader) == {"status": "success", "request_id": "s", "events": [], "done": False}
    assert [e["seq"] for e in host.reply_to(reader)["events"]] == [0]


def test_cancel_drops_the_decodes_and_answers_the_waiting_reader(live):
    streams, host, worker, clock = live
    streams.open(Call(), {}, "s", clock.now)
    send(streams, worker, clock, "s", speech_audio()[:16000 * 2])
    assert host.jobs
    queued = list(host.jobs)
    reader = Call(b"reader")
    streams.next_event(reader, {}, "s", clock.now)
    canceller = Call()
    assert streams.cancel(canceller, "s")
    assert host.reply_to(canceller)["cancelled"] is True
    assert host.reply_to(reader)["error"]["code"] == "cancelled"
    assert host.dropped == queued
    assert not streams.cancel(Call(), "s")  # a second cancel finds nothing
    with pytest.raises(BusError, match="cancelled"):
        streams.next_event(Call(), {}, "s", clock.now)


def test_a_hung_up_client_loses_its_stream_after_the_grace_unless_it_calls_again(live):
    streams, host, worker, clock = live
    first = Call(b"conn-1")
    streams.open(first, {}, "s", clock.now)
    send(streams, worker, clock, "s", speech_audio()[:16000 * 2], call=first)
    streams.client_gone(b"conn-1", clock.now)
    clock.now += 0.5
    send(streams, worker, clock, "s", np.zeros(1600, np.float32), call=Call(b"conn-2"))  # a new socket
    clock.now += 1.0
    streams.tick(clock.now)
    assert "s" in streams.streams
    jobs = list(host.jobs)
    streams.client_gone(b"conn-2", clock.now)
    clock.now += 1.01
    streams.tick(clock.now)
    assert "s" not in streams.streams
    assert host.dropped == jobs and streams.stats()["ended_by"] == {"hangup": 1}


def test_idle_streams_end_and_open_streams_are_bounded(live):
    streams, host, worker, clock = live
    streams.open(Call(), {}, "a", clock.now)
    streams.open(Call(), {}, "b", clock.now)
    with pytest.raises(BusError) as refused:
        streams.open(Call(), {}, "c", clock.now)
    assert refused.value.code == "overloaded"
    with pytest.raises(BusError) as duplicate:
        streams.open(Call(), {}, "a", clock.now)
    assert duplicate.value.code == "duplicate_request_id"
    clock.now += 4.0
    send(streams, worker, clock, "b", np.zeros(1600, np.float32))
    clock.now += 1.5
    streams.tick(clock.now)
    assert list(streams.streams) == ["b"]
    with pytest.raises(BusError, match="idle for 5 s"):
        streams.audio(Call(), {"audio_data": [0.0]}, "a", clock.now)
    streams.open(Call(), {}, "c", clock.now)  # room again


def test_bad_input_is_refused_and_the_stream_carries_on(live):
    streams, host, worker, clock = live
    streams.open(Call(), {"sample_rate": 8000, "dtype": "int16"}, "s", clock.now)
    bad = [
        ({"audio_data": [0], "sample_rate": 16000}, "invalid_audio", "sample_rate"),
        ({"audio_data": [0], "dtype": "float32"}, "invalid_audio", "dtype"),
        ({"audio_data": [0] * 8000 * 3}, "audio_too_long", "per chunk"),
        ({}, "missing_field", "audio_data"),
        ({"audio_data": "noise"}, "invalid_audio", "list of numbers"),
    ]
    for message, code, words in bad:
        with pytest.raises(BusError, match=words) as refused:
            streams.audio(Call(), message, "s", clock.now)
        assert refused.value.code == code
    call = Call()
    streams.audio(call, {"audio_data": [40000]}, "s", clock.now)  # int16 out of range: found on the worker
    run_worker(streams, worker, clock)
    assert host.reply_to(call)["error"]["code"] == "invalid_audio"
    for _ in range(10):
        assert send(streams, worker, clock, "s", np.zeros(8000 * 2, np.int16))["status"] == "success"
    with pytest.raises(BusError, match="max_audio_seconds") as too_long:
        streams.audio(Call(), {"audio_data": [0] * 8}, "s", clock.now)
    assert too_long.value.code == "audio_too_long"
    with pytest.raises(BusError) as unknown:
        streams.audio(Call(), {"audio_data": [0]}, "nope", clock.now)
    assert unknown.value.code == "not_found"
    for options in ({"vad_threshold": 2}, {"partial_interval_ms": "fast"}, {"beam_size": 0},
                    {"context_ms": -1}, {"sample_rate": 5}, {"dtype": "float64"}):
        with pytest.raises(BusError):
            streams.open(Call(), options, "t", clock.now)


def test_partials_share_a_budget_fairly_and_it_adapts_to_the_engine():
    host, worker, clock = FakeHost(), InlineWorker(), Clock()
    streams = LiveStreams(host, worker, LiveSettings(partial_slow_s=1.0), clock=clock)
    speech = speak(SENTENCES[1])
    for name in "abc":
        streams.open(Call(), {}, name, clock.now)
    def owner(job_id: str) -> str:
        return next(name for name, stream in streams.streams.items() if job_id in stream.jobs)

    def feed(seconds: float) -> None:
        for _ in range(round(seconds / 0.1)):
            clock.now += 0.1
            offset = round((clock.now - 100.0) * 16000) % (len(speech) - 1600)
            for name in "abc":
                send(streams, worker, clock, name, speech[offset : offset + 1600])

    feed(1.0)
    assert streams.partials.budget == 2.0
    assert sorted(owner(j) for j in host.jobs) == ["a", "b"]  # c waits its turn
    first = next(iter(host.jobs))
    clock.now += 0.2  # quick: the budget grows
    _, _, on_answer = host.jobs.pop(first)
    on_answer(Decoded("hi"))
    assert streams.partials.budget == 2.5
    assert "c" in {owner(j) for j in host.jobs}  # the next in line, not the one just answered
    clock.now += 3.0  # slow: it halves, once for the round trip
    for job_id in list(host.jobs):
        _, _, on_answer = host.jobs.pop(job_id)
        on_answer(Decoded("hi there"))
    assert streams.partials.budget == 1.25
    assert streams.stats()["partial_budget"] == 1
    assert len(host.jobs) == 1


def test_live_figures_reach_prometheus():
    from prometheus_client.exposition import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from agents.metrics import AgentFigures, AgentMetrics

    figures = {"open_streams": 3, "events": {"final": 4, "partial": 9}, "decodes": {"partial": 7, "final": 2},
               "decodes_skipped": 5, "finals_retried_alone": 2, "partials_set_aside": 6,
               "decode_batch_size_histogram": {"1": 2, "4": 3},
               "partial_latency_ms": {"p50": 400.0, "p95": 900.0, "p99": 950.0}, "final_latency_ms": {}}
    metrics = AgentMetrics("stt", ("whisper-tiny.en",))
    metrics.figures = AgentFigures({"whisper-tiny.en": 0}, {"whisper-tiny.en": 1}, live=figures)
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for family in text_string_to_metric_families(generate_latest(metrics.registry).decode())
           for s in family.samples}
    assert got[("voicebus_live_streams_open", ())] == 3
    assert got[("voicebus_live_events_total", (("type", "final"),))] == 4
    assert got[("voicebus_live_decodes_total", (("kind", "partial"),))] == 7
    assert got[("voicebus_live_decodes_skipped_total", ())] == 5
    assert got[("voicebus_live_finals_retried_total", ())] == 2
    assert got[("voicebus_live_partials_set_aside_total", ())] == 6
    assert got[("voicebus_live_latency_seconds", (("kind", "partial"), ("quantile", "0.95")))] == 0.9
    assert got[("voicebus_live_decode_batch_size_count", ())] == 5
    assert got[("voicebus_live_decode_batch_size_bucket", (("le", "1.0"),))] == 2


def test_no_partial_starts_while_a_final_decode_is_out():
    host, worker, clock = FakeHost(), InlineWorker(), Clock()
    streams = LiveStreams(host, worker, LiveSettings(), clock=clock)
    streams.open(Call(), {}, "a", clock.now)
    streams.open(Call(), {}, "b", clock.now)
    speech = speak(SENTENCES[1])
    for i in range(0, 16000, 1600):  # a: one second of speech, then its end
        clock.now += 0.1
        send(streams, worker, clock, "a", speech[i : i + 1600])
    for job_id in list(host.jobs):
        _, _, on_answer = host.jobs.pop(job_id)
        on_answer(BusError("timeout", "slow"))
    for _ in range(8):
        clock.now += 0.1
        send(streams, worker, clock, "a", np.zeros(1600, np.float32))
    ((final_job, (_, priority, answer_final)),) = host.jobs.items()
    assert priority < PARTIAL_PRIORITY
    for i in range(0, 16000, 1600):  # b speaks while a's final is out: its partials wait
        clock.now += 0.1
        send(streams, worker, clock, "b", speech[i : i + 1600])
    assert list(host.jobs) == [final_job]
    host.jobs.pop(final_job)
    answer_final(Decoded("Please call me."))
    assert len(host.jobs) == 1 and next(iter(host.jobs.values()))[1] == PARTIAL_PRIORITY  # b's, now
