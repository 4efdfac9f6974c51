"""OpenAI Realtime transcription sessions (`/v1/realtime`) as the official `openai` SDK opens
them, against the gateway of the session's real bus: 24 kHz pcm16 microphone audio in,
speech events, transcript deltas and completed transcripts out."""

from __future__ import annotations

import base64
import json
from collections import defaultdict

import av
import numpy as np
import openai
import pytest
from conftest import wait_until
from scipy.signal import resample_poly
from speech import SENTENCES, speak, word_error_rate
from websockets.sync.client import connect as ws_connect

pytestmark = pytest.mark.slow

RATE = 24_000
CHUNK = RATE // 10  # 100 ms, as a microphone callback sends it
TRANSCRIPTION = {"model": "whisper-1", "language": "en"}


def pcm16_at_24k(audio_16k: np.ndarray) -> bytes:
    audio = resample_poly(audio_16k, 3, 2)
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def three_utterances() -> tuple[bytes, list[tuple[str, float, float]]]:
    """Three sentences with pauses, as 24 kHz pcm16, and each one's text and span (s)."""
    texts = [SENTENCES[1], SENTENCES[2], SENTENCES[6]]
    pieces, spans, t = [np.zeros(8000, np.float32)], [], 0.5
    for text in texts:
        spoken = speak(text)
        pieces += [spoken, np.zeros(16000, np.float32)]
        spans.append((text, t, t + len(spoken) / 16000))
        t += len(spoken) / 16000 + 1.0
    return pcm16_at_24k(np.concatenate(pieces)), spans


def connect(bus):
    client = openai.OpenAI(base_url=f"{bus.http_url}/v1", api_key="unused", max_retries=0)
    return client.realtime.connect(extra_query={"intent": "transcription"})


def send_audio(connection, pcm: bytes, chunk_bytes: int = 2 * CHUNK) -> None:
    for start in range(0, len(pcm), chunk_bytes):
        connection.input_audio_buffer.append(audio=base64.b64encode(pcm[start:start + chunk_bytes]).decode())


def events_until(connection, stop, limit: int = 500) -> list:
    events = []
    for _ in range(limit):
        event = connection.recv()
        events.append(event)
        if stop(event):
            return events
    raise AssertionError(f"no end event in {limit}: {[e.type for e in events]}")


def update_session(connection, **audio_input) -> None:
    connection.session.update(session={"type": "transcription", "audio": {"input": audio_input}})
    events = events_until(connection, lambda e: e.type in ("session.updated", "error"))
    assert events[-1].type == "session.updated", events[-1]


def test_server_vad_session_transcribes_each_utterance_with_deltas_and_times(bus):
    pcm, spans = three_utterances()
    with connect(bus) as connection:
        created = connection.recv()
        assert created.type == "session.created" and created.session.type == "transcription"
        update_session(connection, format={"type": "audio/pcm", "rate": RATE}, transcription=TRANSCRIPTION,
                       turn_detection={"type": "server_vad", "silence_duration_ms": 500})
        send_audio(connection, pcm)
        completed: list = []
        events = events_until(connection, lambda e: (
            e.type == "conversation.item.input_audio_transcription.completed"
            and completed.append(e) is None and len(completed) == len(spans)))
    failures = ("error", "conversation.item.input_audio_transcription.failed")
    assert not [e for e in events if e.type in failures]
    items = [e.item_id for e in completed]
    assert len(set(items)) == 3
    deltas: dict[str, str] = defaultdict(str)
    started, stopped, committed = {}, {}, []
    for event in events:
        if event.type == "conversation.item.input_audio_transcription.delta":
            deltas[event.item_id] += event.delta
        elif event.type == "input_audio_buffer.speech_started":
            started[event.item_id] = event.audio_start_ms
        elif event.type == "input_audio_buffer.speech_stopped":
            stopped[event.item_id] = event.audio_end_ms
        elif event.type == "input_audio_buffer.committed":
            committed.append((event.item_id, event.previous_item_id))
    assert committed == [(items[0], None), (items[1], items[0]), (items[2], items[1])]
    for event, (text, start_s, end_s) in zip(completed, spans, strict=True):
        assert word_error_rate(text, event.transcript) < 0.35, (text, event.transcript)
        assert deltas[event.item_id] == event.transcript  # the deltas add up to the transcript
        assert abs(started[event.item_id] / 1000 - start_s) < 0.6
        assert abs(stopped[event.item_id] / 1000 - end_s) < 0.8


def test_turn_detection_off_transcribes_each_commit_whole(bus):
    with connect(bus) as connection:
        connection.recv()
        update_session(connection, format={"type": "audio/pcm", "rate": RATE}, transcription=TRANSCRIPTION,
                       turn_detection=None)
        connection.input_audio_buffer.commit()
        empty = events_until(connection, lambda e: e.type == "error")[-1]
        assert empty.error.code == "input_audio_buffer_commit_empty"
        for sentence in (SENTENCES[1], SENTENCES[3]):
            send_audio(connection, pcm16_at_24k(speak(sentence)))
            connection.input_audio_buffer.commit()
            events = events_until(connection, lambda e: e.type.endswith(("completed", "failed", "error")))
            assert [e.type for e in events] == [
                "input_audio_buffer.committed", "conversation.item.input_audio_transcription.delta",
                "conversation.item.input_audio_transcription.completed"]
            assert word_error_rate(sentence, events[-1].transcript) < 0.35, events[-1].transcript


def test_bad_client_events_get_error_events_and_the_session_goes_on(bus):
    with connect(bus) as connection:
        connection.recv()
        bad = [
            {"type": "input_audio_buffer.append", "audio": "not base64!"},
            {"type": "response.create"},
            {"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
                "format": {"type": "audio/pcm", "rate": 1000}}}}},
            {"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
                "format": {"type": "audio/opus"}}}}},
            {"type": "session.update", "session": {"type": "transcription", "audio": {"input": {
                "transcription": {"model": "whisper-1", "prompt": "Names: Zoë"}}}}},
        ]
        codes = []
        for event in bad:
            connection.send(event)
            reply = events_until(connection, lambda e: e.type in ("error", "session.updated"))[-1]
            assert reply.type == "error", (event, reply)
            codes.append(reply.error.code)
        assert codes == ["invalid_value", "unknown_event", "invalid_value", "unsupported_value",
                         "unsupported_value"]
        # Still serving: 8 kHz G.711 mu-law from here on, transcribed.
        update_session(connection, format={"type": "audio/pcmu"}, transcription=TRANSCRIPTION,
                       turn_detection=None)
        codec = av.CodecContext.create("pcm_mulaw", "w")
        codec.sample_rate, codec.layout, codec.format = 8000, "mono", "s16"
        audio = (resample_poly(speak(SENTENCES[1]), 1, 2) * 32767).astype("<i2")
        frame = av.AudioFrame.from_ndarray(audio.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 8000
        mulaw = b"".join(bytes(p) for p in [*codec.encode(frame), *codec.encode(None)])
        send_audio(connection, mulaw, chunk_bytes=800)
        connection.input_audio_buffer.commit()
        done = events_until(connection, lambda e: e.type.endswith(("completed", "failed", "error")))[-1]
        assert done.type == "conversation.item.input_audio_transcription.completed", done
        assert word_error_rate(SENTENCES[1], done.transcript) < 0.35, done.transcript


def test_a_client_that_leaves_has_its_stream_cancelled(bus):
    def live_stats() -> dict:
        return bus.request({"action": "stats"})["live"]

    cancelled = live_stats()["ended_by"].get("cancelled", 0)
    pcm, _ = three_utterances()
    with connect(bus) as connection:
        connection.recv()
        send_audio(connection, pcm[: len(pcm) // 3])  # leaves in the middle of the first utterance
        events_until(connection, lambda e: e.type == "input_audio_buffer.speech_started")
    wait_until(lambda: live_stats()["ended_by"].get("cancelled", 0) > cancelled, 30, "the stream cancelled")


def test_a_beta_client_on_a_plain_websocket(bus):
    """Clients built on the beta API send `transcription_session.update` in its own shape."""
    url = bus.http_url.replace("http://", "ws://") + "/v1/realtime?intent=transcription"
    with ws_connect(url) as socket:
        assert json.loads(socket.recv())["type"] == "session.created"
        socket.send(json.dumps({"type": "transcription_session.update", "session": {
            "input_audio_format": "pcm16", "turn_detection": None,
            "input_audio_transcription": {"model": "whisper-1", "language": "en"}}}))
        updated = json.loads(socket.recv())
        assert updated["type"] == "transcription_session.updated"
        assert updated["session"]["audio"]["input"]["turn_detection"] is None
        socket.send(b"\x00\x01")  # binary frames are not client events
        assert json.loads(socket.recv())["error"]["code"] == "invalid_json"
        pcm = pcm16_at_24k(speak(SENTENCES[2]))
        audio = base64.b64encode(pcm).decode()
        socket.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
        socket.send(json.dumps({"type": "input_audio_buffer.commit"}))
        while (event := json.loads(socket.recv(timeout=120)))["type"] != (
                "conversation.item.input_audio_transcription.completed"):
            assert event["type"] != "error", event
        assert word_error_rate(SENTENCES[2], event["transcript"]) < 0.35, event
