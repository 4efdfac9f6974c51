"""What once took an agent down or let a request through wrongly, over real sockets: each
test here failed before its fix."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
from conftest import queue_held, wait_until

LONG_TEXT = " ".join(f"Sentence number {i} is here." for i in range(12))


def tts(bus, message: dict, timeout_s: float = 120) -> dict:
    return bus.request(message, address=bus.tts_address, timeout_s=timeout_s)


def test_output_path_naming_a_directory_is_refused_and_the_agent_serves_on(bus):
    (bus.journal_dir.parent / "output" / "adir").mkdir(parents=True, exist_ok=True)
    reply = tts(bus, {"action": "synthesize", "text": "Hi.", "output_path": "adir"})
    assert reply["error"]["code"] == "invalid_field" and "directory" in reply["error"]["message"]
    assert tts(bus, {"action": "health"})["ready"] is True


def test_output_path_naming_an_existing_file_is_refused_not_overwritten(bus):
    existing = bus.journal_dir.parent / "output" / "kept.wav"
    existing.parent.mkdir(parents=True, exist_ok=True)
    existing.write_bytes(b"precious")
    reply = tts(bus, {"action": "synthesize", "text": "Hi.", "output_path": "kept.wav"})
    assert reply["error"]["code"] == "invalid_field" and "exists" in reply["error"]["message"]
    assert existing.read_bytes() == b"precious"


def test_stream_refuses_output_path(bus):
    reply = tts(bus, {"action": "stream", "text": "One. Two.", "output_path": "s.wav"})
    assert reply["error"]["code"] == "invalid_field" and "output_path" in reply["error"]["message"]


def test_configure_with_a_bad_model_is_invalid_field_at_once(bus):
    started = time.monotonic()
    settings = {"max_batch_size": 4}
    reply = bus.request({"action": "configure", "model": ["whisper-tiny.en"], "settings": settings})
    assert reply["error"]["code"] == "invalid_field"
    assert time.monotonic() - started < 1.5  # not the 2 s wait for an answer that never came


def test_configure_on_one_agent_retunes_only_its_own_models(bus):
    before = tts(bus, {"action": "stats"})["models"]
    reply = bus.request({"action": "configure", "settings": {"max_batch_wait_ms": 77}})
    try:
        assert reply["status"] == "success" and all(m["task"] == "stt" for m in reply["models"])
        after = tts(bus, {"action": "stats"})["models"]
        assert [m["policy"] for m in after] == [m["policy"] for m in before]
    finally:
        bus.request({"action": "configure", "settings": {"max_batch_wait_ms": 100}})


def test_a_timeout_under_one_millisecond_is_invalid_not_the_default(bus):
    reply = tts(bus, {"action": "synthesize", "text": "Hi.", "timeout_ms": 0.5})
    assert reply["error"]["code"] == "invalid_field" and "timeout_ms" in reply["error"]["message"]


def test_a_protocol_version_is_reported_and_checked(bus):
    assert bus.request({"action": "health"})["protocol"] == 1
    assert bus.request({"action": "health", "protocol": 1})["status"] == "success"
    assert bus.request({"action": "health", "protocol": 99})["error"]["code"] == "invalid_field"


def test_a_big_request_does_not_hold_up_the_agent_loop(bus):
    """Decoding and checking ~40 MB of JSON audio takes seconds of CPU: the agent answers
    `health` (and keeps its heartbeats) meanwhile."""
    samples = np.random.default_rng(0).uniform(-0.5, 0.5, 4_000_000).round(6).tolist()
    samples[-1] = 2.0  # out of range: refused after the full decode, so no model time is spent
    frame = json.dumps({"action": "transcribe", "audio_data": samples, "sample_rate": 44100}).encode()
    big: dict = {}
    sender = threading.Thread(target=lambda: big.update(bus.request(frame, timeout_s=120)))
    sender.start()
    slowest = 0.0
    while sender.is_alive():
        started = time.monotonic()
        assert bus.request({"action": "health"}, timeout_s=30)["live"] is True
        slowest = max(slowest, time.monotonic() - started)
        time.sleep(0.05)
    sender.join()
    assert big["error"]["code"] == "invalid_audio"
    assert slowest < 1.0, f"health took {slowest:.2f} s while a big request was decoded"


# --- streams, on the bus with small limits (2 open streams, 3 s idle) -----------------------


def tts_queue_depth(bus) -> int:
    return tts(bus, {"action": "stats"})["models"][0]["queue_depth"]


def test_open_streams_are_bounded_and_an_unread_one_expires_with_its_jobs_cancelled(fragile_bus):
    # Held far longer than the waits below, so that only the expiry can empty the queue.
    with queue_held(fragile_bus, fragile_bus.tts_address, seconds=120):
        opened = [tts(fragile_bus, {"action": "stream", "text": LONG_TEXT, "request_id": f"s{i}"})
                  for i in range(3)]
        assert [r["status"] for r in opened[:2]] == ["streaming", "streaming"]
        assert opened[2]["error"]["code"] == "overloaded"
        # The chunks reach the queue once the model manager has prepared them.
        queued = wait_until(
            lambda: (depth := tts_queue_depth(fragile_bus)) >= 2 and depth, 30, "the first chunks queued"
        )
        assert queued == 2  # one chunk each: nothing runs ahead of its first reader

        def expired() -> dict | None:  # unread for longer than stream_idle_s
            stats = tts(fragile_bus, {"action": "stats"})
            return stats if stats["open_streams"] == 0 and stats["models"][0]["queue_depth"] == 0 else None

        stats = wait_until(expired, 60, "the unread streams' expiry")
        assert stats["open_streams"] == 0 and stats["models"][0]["queue_depth"] == 0
        gone = tts(fragile_bus, {"action": "next_chunk", "request_id": "s0"})
        assert gone["error"]["code"] == "not_found"


def test_a_stream_chunk_that_finds_the_model_busy_waits_and_the_stream_completes(fragile_bus):
    def waiting() -> int:
        return tts(fragile_bus, {"action": "stats"})["dispatch"]["waiting"]["kokoro-82m"]

    # A batch of 16 never fills from a queue of 8: the queue stays full until the hold ends.
    with queue_held(fragile_bus, fragile_bus.tts_address, seconds=120, batch=16):
        for i in range(8):  # fill the model's queue of 8
            assert tts(fragile_bus, {"action": "queue_for_batch", "text": "Hi.", "request_id": f"q{i}"}
                       )["status"] == "queued"
        wait_until(lambda: tts_queue_depth(fragile_bus) == 8, 30, "a full queue")
        opened = tts(fragile_bus, {"action": "stream", "text": "One. Two.", "request_id": "later"})
        assert opened["status"] == "streaming"
        # The model manager holds its credit's worth (the queue of 8): the chunk waits at the agent.
        wait_until(lambda: waiting() >= 1, 30, "the first chunk waiting for credit")
    chunks = [tts(fragile_bus, {"action": "next_chunk", "request_id": "later"}, timeout_s=120)
              for _ in range(opened["num_chunks"])]
    assert [c["status"] for c in chunks] == ["success"] * len(chunks) and chunks[-1]["final"] is True
    for i in range(8):
        tts(fragile_bus, {"action": "get_result", "request_id": f"q{i}"})
