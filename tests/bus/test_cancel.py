"""Work whose client cancelled it, or whose client has gone, is dropped before it runs.

Pure tests of agents/connections.py's tracker, then the real bus: requests are held in the
model's queue (`queue_held`: a batch of 8 that never fills) while the client cancels or
hangs up, and the model's own counters show that they never ran.
"""

from __future__ import annotations

import uuid

import zmq
from conftest import queue_held, wait_until
from speech import SENTENCES, speak, word_error_rate

from agents.connections import ConnectionTracker
from agents.model_client import ClientConfig, ModelClient

STT_MODEL = "whisper-tiny.en"

# --- the tracker, without sockets ------------------------------------------------------------


def test_a_disconnect_names_the_client_that_was_on_the_descriptor():
    tracker = ConnectionTracker()
    tracker.accepted(7)
    assert tracker.message(7, b"client-a")
    assert tracker.disconnected(7) == b"client-a"
    assert len(tracker) == 0


def test_a_connection_that_sent_nothing_names_nobody():
    tracker = ConnectionTracker()
    tracker.accepted(7)
    assert tracker.disconnected(7) is None


def test_a_reused_descriptor_belongs_to_its_new_client():
    tracker = ConnectionTracker()
    tracker.accepted(7)
    tracker.message(7, b"old")
    assert tracker.disconnected(7) == b"old"
    tracker.accepted(7)
    assert tracker.message(7, b"new")
    assert tracker.disconnected(7) == b"new"


def test_a_message_read_after_its_connection_closed_is_from_a_client_that_has_gone():
    tracker = ConnectionTracker()
    tracker.accepted(7)
    assert tracker.disconnected(7) is None  # the close was seen before the message was read
    assert not tracker.message(7, b"hung-up")
    tracker.accepted(7)  # until a new connection takes the descriptor
    assert tracker.message(7, b"next")


def test_messages_without_a_descriptor_are_always_live():
    assert ConnectionTracker().message(-1, b"inproc")


# --- on the bus ----------------------------------------------------------------------------------


def _model(bus, address: str, name: str) -> dict:
    stats = bus.request({"action": "stats"}, address=address)
    return next(m for m in stats["models"] if m["model"] == name)


def _stt_model(bus) -> dict:
    return _model(bus, bus.stt_address, STT_MODEL)


#: A clip tiny.en reads word for word. (Not "Hello there.": at its 10 s window floor tiny.en
#: hears that 0.9 s clip as "The lone air", and these tests are about cancelling, not accuracy.)
SPOKEN = SENTENCES[1]


def _audio_fields() -> dict:
    return {"audio_data": speak(SPOKEN).tolist(), "model_pref": STT_MODEL}


def test_a_cancelled_queue_for_batch_request_never_runs(bus):
    request_id = f"cancel-{uuid.uuid4().hex[:8]}"
    with queue_held(bus, bus.stt_address):
        ran_before = _stt_model(bus)["requests"]
        queued = bus.request({"action": "queue_for_batch", "request_id": request_id, **_audio_fields()})
        assert queued["status"] == "queued"
        wait_until(lambda: _stt_model(bus)["queue_depth"] == 1, 10, "queue depth 1")
        client = ModelClient(ClientConfig(stt_address=bus.stt_address, tts_address=bus.tts_address))
        reply = client.cancel(request_id)
        assert reply == {"status": "success", "request_id": request_id, "cancelled": True}
        wait_until(lambda: _stt_model(bus)["queue_depth"] == 0, 10, "queue depth 0")
        assert _stt_model(bus)["requests"] == ran_before
    result = bus.request({"action": "get_result", "request_id": request_id})
    assert result["status"] == "error" and result["error"]["code"] == "cancelled"


def test_cancel_of_an_unknown_request_is_not_found(bus):
    reply = bus.request({"action": "cancel", "request_id": "never-queued"})
    assert reply["error"]["code"] == "not_found"


def test_a_finished_result_is_not_cancelled_but_kept_for_get_result(bus):
    request_id = f"done-{uuid.uuid4().hex[:8]}"
    bus.request({"action": "queue_for_batch", "request_id": request_id, **_audio_fields()})
    wait_until(lambda: bus.request({"action": "stats"})["in_flight"] == 0, 60, "nothing in flight")
    reply = bus.request({"action": "cancel", "request_id": request_id})
    assert reply["status"] == "success" and reply["cancelled"] is False
    assert bus.request({"action": "get_result", "request_id": request_id})["status"] == "success"


def test_a_client_that_hangs_up_has_its_queued_request_dropped_unrun(bus):
    before = bus.request({"action": "stats"})
    with queue_held(bus, bus.stt_address):
        ran_before = _stt_model(bus)["requests"]
        sock = zmq.Context.instance().socket(zmq.REQ)
        sock.connect(bus.stt_address)
        sock.send_json({"action": "transcribe", **_audio_fields()})
        wait_until(lambda: _stt_model(bus)["queue_depth"] == 1, 10, "queue depth 1")
        sock.close(linger=0)  # gives up, as a retrying client does before its next attempt
        wait_until(lambda: _stt_model(bus)["queue_depth"] == 0, 10, "queue depth 0")
        after = bus.request({"action": "stats"})
        assert after["dropped_for_gone_clients"] == before["dropped_for_gone_clients"] + 1
        assert after["in_flight"] == 0
        assert _stt_model(bus)["requests"] == ran_before
    # and the agent serves the next client as usual
    reply = bus.request({"action": "transcribe", **_audio_fields()})
    assert reply["status"] == "success" and word_error_rate(SPOKEN, reply["text"]) < 0.5, reply


def test_a_cancelled_stream_stops_and_is_gone(bus):
    with queue_held(bus, bus.tts_address):
        opened = bus.request({"action": "stream", "text": "One. Two. Three.", "format": "pcm"},
                             address=bus.tts_address)
        assert opened["status"] == "streaming"
        rid = opened["request_id"]
        reply = bus.request({"action": "cancel", "request_id": rid}, address=bus.tts_address)
        assert reply["cancelled"] is True
        chunk = bus.request({"action": "next_chunk", "request_id": rid}, address=bus.tts_address)
        assert chunk["error"]["code"] == "not_found"
        stats = bus.request({"action": "stats"}, address=bus.tts_address)
        assert stats["in_flight"] == 0
        assert all(m["queue_depth"] == 0 for m in stats["models"])
