"""The stream state machine (agents/streams.py) on its own: no sockets, an explicit clock."""

from __future__ import annotations

import pytest

from agents.streams import NextOutput, ReleasedJob, Stream, StreamFull, StreamRegistry
from model_manager.errors import BusError


def tts_stream(chunks: int, buffer: int = 3, now: float = 0.0, idle_s: float = 10.0) -> Stream[str]:
    stream: Stream[str] = Stream.open("s", now, idle_s, max_buffered=buffer)
    for i in range(chunks):
        stream.add_job(f"j{i}", f"piece {i}")
    stream.end_input()
    return stream


def test_the_first_job_runs_alone_then_the_buffer_bounds_what_runs_ahead_of_the_reader():
    stream = tts_stream(6, buffer=3)
    assert stream.release() == [ReleasedJob("j0", 0, "piece 0")]
    assert stream.release() == []  # nothing more until the first output is in
    assert stream.fulfil("j0", {"n": 0})
    assert [job.job_id for job in stream.release()] == ["j1", "j2"]  # 1 ready + 2 running = 3
    assert stream.release() == []
    assert stream.take(1.0) == NextOutput(0, {"n": 0}, False)
    assert [job.job_id for job in stream.release()] == ["j3"]  # a read made room for one


def test_outputs_go_out_in_order_whatever_order_they_come_in():
    stream = tts_stream(3, buffer=3, )
    stream.release()
    stream.fulfil("j0", {"n": 0})
    stream.release()
    assert stream.fulfil("j2", {"n": 2})
    assert stream.take(0.0) == NextOutput(0, {"n": 0}, False)
    assert stream.take(0.0) is None  # j1 is not in yet
    stream.fulfil("j1", {"n": 1})
    assert stream.take(0.0) == NextOutput(1, {"n": 1}, False)
    assert stream.take(0.0) == NextOutput(2, {"n": 2}, True)
    assert stream.finished


def test_an_unknown_or_repeated_answer_is_ignored():
    stream = tts_stream(1)
    stream.release()
    assert stream.fulfil("j0", {"n": 0})
    assert not stream.fulfil("j0", {"n": 0})
    assert not stream.fulfil("nope", {})


def test_an_unread_stream_expires_and_cancel_returns_the_jobs_still_running():
    stream = tts_stream(5, buffer=2, now=0.0, idle_s=10.0)
    stream.release()
    stream.fulfil("j0", {"n": 0})
    stream.release()
    assert not stream.expired(9.9)
    stream.reader = "a waiting read call"
    assert not stream.expired(100.0)  # a reader is waiting: not idle
    stream.reader = None
    assert stream.expired(10.0)
    assert stream.cancel() == ["j1"]
    assert stream.release() == [] and stream.take(11.0) is None


def test_reading_renews_the_idle_deadline():
    stream = tts_stream(2, now=0.0, idle_s=10.0)
    stream.take(8.0)
    assert not stream.expired(15.0) and stream.expired(18.0)


def test_pushed_outputs_need_no_job_and_respect_the_bound():
    """How a live stream's events go in: pushed as they happen, read in order."""
    stream: Stream[str] = Stream.open("live", 0.0, 10.0, max_buffered=2)
    stream.push({"event": "speech_started"})
    stream.push({"event": "partial", "text": "hel"})
    with pytest.raises(StreamFull):
        stream.push({"event": "partial", "text": "hello"})
    assert stream.take(1.0) == NextOutput(0, {"event": "speech_started"}, False)
    stream.push({"event": "final", "text": "hello"})
    stream.end_input()
    assert stream.take(1.0) == NextOutput(1, {"event": "partial", "text": "hel"}, False)
    assert stream.take(1.0) == NextOutput(2, {"event": "final", "text": "hello"}, True)
    with pytest.raises(ValueError):
        stream.push({"event": "late"})


def test_the_registry_is_bounded_and_refuses_a_second_stream_under_an_open_id():
    registry: StreamRegistry[str] = StreamRegistry(max_open=2)
    registry.add(Stream.open("a", 0.0, 5.0))
    with pytest.raises(BusError) as duplicate:
        registry.add(Stream.open("a", 0.0, 5.0))
    assert duplicate.value.code == "duplicate_request_id"
    registry.add(Stream.open("b", 0.0, 5.0))
    with pytest.raises(BusError) as full:
        registry.add(Stream.open("c", 0.0, 5.0))
    assert full.value.code == "overloaded" and full.value.retry_after_ms
    assert [s.stream_id for s in registry.expired(5.0)] == ["a", "b"]
    assert len(registry) == 0
