"""The TTS bus end to end: real Kokoro-82M behind the TTS agent, checked by the bus's own Whisper."""

from __future__ import annotations

import base64
import io
import threading
import time

import msgpack
import numpy as np
import pytest
import soundfile as sf
import zmq
from conftest import fixed_batching
from speech import word_error_rate

from agents.model_client import ClientConfig, ModelClient
from model_manager.audio import resample

# Kokoro with the shipped Japanese voice packs speaks English with an accent; tiny.en still
# understands it. MODELS.md measured WER 3-6% with a larger Whisper; tiny.en greedy is
# noisier, so the bound is loose but far below what broken audio (WER ~1) gives.
MAX_ROUND_TRIP_WER = 0.35
ROUND_TRIP_TEXTS = [
    "The weather is nice today.",
    "Please open the window.",
    "We will meet at the station tomorrow morning.",
]


def synthesize(bus, text: str, **fields) -> dict:
    return bus.request(
        {"action": "synthesize", "text": text, **fields},
        address=bus.tts_address,
        encoding="msgpack",
        timeout_s=180,
    )


def pcm(reply: dict) -> np.ndarray:
    assert reply["status"] == "success", reply
    return np.frombuffer(reply["audio"], dtype="<f4")


def transcribe(bus, audio_24k: np.ndarray) -> str:
    audio = resample(audio_24k, 24000, 16000)
    reply = bus.request(
        {"action": "transcribe", "audio_data": audio.tobytes(), "dtype": "float32"}, encoding="msgpack"
    )
    assert reply["status"] == "success", reply
    return reply["text"]


def test_health_and_voices(bus):
    health = bus.request({"action": "health"}, address=bus.tts_address)
    assert health["ready"] is True and health["models"]
    voices = bus.request({"action": "voices"}, address=bus.tts_address)["voices"]
    names = next(iter(voices.values()))
    assert {"jf_alpha", "jm_kumo"} <= set(names)


def test_round_trip_through_the_bus_whisper(bus):
    wers = []
    for text in ROUND_TRIP_TEXTS:
        audio = pcm(synthesize(bus, text, format="pcm", voice="jf_alpha"))
        assert np.abs(audio).max() > 0.05, "silence"
        wers.append(word_error_rate(text, transcribe(bus, audio)))
    assert np.mean(wers) < MAX_ROUND_TRIP_WER, wers


def test_wav_format_in_json_is_base64(bus):
    reply = bus.request(
        {"action": "synthesize", "text": "Hello there.", "format": "wav"},
        address=bus.tts_address,
        timeout_s=120,
    )
    assert reply["status"] == "success" and reply["sample_rate"] == 24000
    audio, rate = sf.read(io.BytesIO(base64.b64decode(reply["audio"])))
    assert rate == 24000 and len(audio) / rate == pytest.approx(reply["duration_s"], abs=0.01)


def test_long_text_is_spoken_in_full(bus):
    # Over 2,000 characters is proven on the engine (test_kokoro_engine); through the bus a
    # shorter text keeps the CPU time down. Speed 4 likewise; the splitting is the same.
    sentence = "This sentence is repeated to make a long text that must be spoken in full. "
    short = pcm(synthesize(bus, sentence, format="pcm", speed=4.0))
    long_text = sentence * 10
    long = pcm(synthesize(bus, long_text, format="pcm", speed=4.0))
    ratio = len(long) / len(short)
    assert 7 < ratio < 13, ratio  # about 10x the short one: nothing was dropped


def test_output_path_is_written_and_confined(bus, tmp_path):
    ok = synthesize(bus, "Saved to a file.", output_path="test/saved.wav")
    assert ok["status"] == "success" and ok["output_path"].endswith("test/saved.wav")
    audio, rate = sf.read(ok["output_path"])
    assert rate == 24000 and len(audio) > 0
    escape = synthesize(bus, "No.", output_path="../../etc/evil.wav")
    assert escape["error"]["code"] == "invalid_field"


def test_batch_synthesize_keeps_order_and_isolates_bad_items(bus):
    items = [
        {"text": "First one.", "request_id": "a", "format": "pcm"},
        {"text": "", "request_id": "empty"},
        {"text": "The second one is longer than the first.", "request_id": "b", "format": "pcm"},
        {"text": "Unknown voice.", "voice": "nobody", "request_id": "nobody"},
    ]
    reply = bus.request(
        {"action": "batch_synthesize", "batch_data": items},
        address=bus.tts_address,
        encoding="msgpack",
        timeout_s=180,
    )
    results = reply["results"]
    assert [r["request_id"] for r in results] == ["a", "empty", "b", "nobody"]
    assert results[1]["error"]["code"] == "invalid_field"
    assert results[3]["error"]["code"] == "unknown_voice"
    assert len(pcm(results[2])) > len(pcm(results[0]))


def test_queue_for_batch_and_get_result(bus):
    queued = bus.request(
        {"action": "queue_for_batch", "text": "Queued speech.", "format": "pcm", "request_id": "tts-q1"},
        address=bus.tts_address,
    )
    assert queued == {"status": "queued", "request_id": "tts-q1"}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        result = bus.request(
            {"action": "get_result", "request_id": "tts-q1"}, address=bus.tts_address, encoding="msgpack"
        )
        if result["status"] != "pending":
            break
        time.sleep(0.1)
    assert len(pcm(result)) > 24000 * 0.3


def _histogram(bus) -> dict[str, int]:
    stats = bus.request({"action": "stats"}, address=bus.tts_address)
    (model,) = stats["models"]
    return dict(model["batch_size_histogram"])


def test_stream_sends_chunks_in_order_the_first_alone(bus):
    text = "First sentence here. Second sentence follows. And a third one ends it."
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(bus.tts_address)
    # Batches would form whatever the cost model chose: the first chunk must still run alone.
    # A lone wait as long as the batching wait turns the idle fast path off, so chunks 2 and 3,
    # sent together, are not split by which of them reaches the idle worker first.
    with fixed_batching(bus, bus.tts_address, min_batch_size=2, max_batch_wait_ms=1000,
                        lone_request_wait_ms=1000):
        before = _histogram(bus)
        _stream_three_chunks(sock, text)
        after = _histogram(bus)
    grown = {size: after.get(size, 0) - before.get(size, 0) for size in after}
    assert {size: n for size, n in grown.items() if n} == {"1": 1, "2": 1}


def _stream_three_chunks(sock, text: str) -> None:
    try:
        sock.send(msgpack.packb({"action": "stream", "text": text, "format": "pcm", "request_id": "st1"}))
        assert sock.poll(30_000)
        opened = msgpack.unpackb(sock.recv())
        assert opened["status"] == "streaming" and opened["num_chunks"] == 3
        chunks = []
        while True:
            sock.send(msgpack.packb({"action": "next_chunk", "request_id": "st1"}))
            assert sock.poll(120_000)
            chunk = msgpack.unpackb(sock.recv())
            assert chunk["status"] == "success", chunk
            chunks.append(chunk)
            if chunk["final"]:
                break
    finally:
        sock.close()
    assert [c["index"] for c in chunks] == [0, 1, 2]
    assert all(len(c["audio"]) > 0 for c in chunks)


def test_concurrent_clients_are_batched(bus):
    texts = [f"Client number {n} says hello." for n in range(6)]
    replies: list[dict | None] = [None] * len(texts)
    barrier = threading.Barrier(len(texts))

    def client(i: int) -> None:
        barrier.wait()
        replies[i] = synthesize(bus, texts[i], format="pcm", voice="jm_kumo", request_id=i)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(texts))]
    with fixed_batching(bus, bus.tts_address):  # the cost model picks size 1 for Kokoro on a CPU
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
    for i, reply in enumerate(replies):
        assert reply is not None and reply["request_id"] == i
        assert len(pcm(reply)) > 0
    stats = bus.request({"action": "stats"}, address=bus.tts_address)
    assert max(m["max_batch_size_seen"] for m in stats["models"]) > 1, stats["models"]


def test_model_client_mixes_stt_and_tts_items(bus):
    client = ModelClient(ClientConfig(stt_address=bus.stt_address, tts_address=bus.tts_address))
    spoken = client.generate(
        batch_mode=True,
        batch_data=[{"text": "Good morning.", "voice": "jf_alpha", "speed": 1.0, "request_id": "t1"}],
    )
    audio = spoken["results"][0]["audio"]
    assert isinstance(audio, np.ndarray) and audio.dtype == np.float32
    assert spoken["results"][0]["sample_rate"] == 24000
    reply = client.generate(
        batch_mode=True,
        batch_data=[
            {"audio_data": resample(audio, 24000, 16000), "sample_rate": 16000, "request_id": "s1"},
            {"text": "Good evening.", "request_id": "t2"},
            {"text": "", "request_id": "bad"},
        ],
    )
    assert reply["status"] == "success"
    s1, t2, bad = reply["results"]
    assert s1["request_id"] == "s1" and "morning" in s1["text"].lower()
    assert t2["request_id"] == "t2" and len(t2["audio"]) > 0
    assert bad["status"] == "error" and bad["error"]["code"] == "invalid_field"


BAD_TTS = [
    ({"action": "synthesize"}, "missing_field"),
    ({"action": "synthesize", "text": ""}, "invalid_field"),
    ({"action": "synthesize", "text": "   "}, "invalid_field"),
    ({"action": "synthesize", "text": 42}, "invalid_field"),
    ({"action": "synthesize", "text": "x" * 100_000}, "text_too_long"),
    ({"action": "synthesize", "text": "Hi.", "voice": "nobody"}, "unknown_voice"),
    ({"action": "synthesize", "text": "Hi.", "speed": 0}, "invalid_field"),
    ({"action": "synthesize", "text": "Hi.", "speed": -1}, "invalid_field"),
    ({"action": "synthesize", "text": "Hi.", "speed": float("nan")}, "invalid_field"),
    ({"action": "synthesize", "text": "Hi.", "speed": "fast"}, "invalid_field"),
    ({"action": "synthesize", "text": "Hi.", "format": "mp3"}, "invalid_field"),
    ({"action": "transcribe", "text": "Hi."}, "unknown_action"),
    ({"action": "next_chunk", "request_id": "no-such-stream"}, "not_found"),
]


@pytest.mark.parametrize(("message", "code"), BAD_TTS, ids=[c + str(i) for i, (_, c) in enumerate(BAD_TTS)])
def test_bad_tts_input_gets_a_clear_error(bus, message, code):
    reply = bus.request(message, address=bus.tts_address, encoding="msgpack", timeout_s=60)
    assert reply["status"] == "error" and reply["error"]["code"] == code, reply
    assert bus.request({"action": "health"}, address=bus.tts_address)["live"] is True
