"""The STT bus end to end: real processes, real sockets on 127.0.0.1, real Whisper weights."""

from __future__ import annotations

import json
import threading
import time

import msgpack
import numpy as np
import pytest
import zmq
from conftest import fixed_batching
from speech import SENTENCES, speak, word_error_rate

from agents.model_client import ClientConfig, ModelClient

# Mean word error rate of the bundled tiny.en (greedy) on espeak-ng's robotic voice: measured
# 0.12 on these sentences (tiny.en mishears "brown fox" and "bought fresh bread"). The bound
# catches a broken pipeline (wrong features, resampling or prompt), which gives WER near 1.
MAX_MEAN_WER = 0.20


def transcribe_json(bus, audio: np.ndarray, **fields) -> dict:
    return bus.request({"action": "transcribe", "audio_data": audio.tolist(), "sample_rate": 16000, **fields})


def test_health_reports_ready_with_models(bus):
    reply = bus.request({"action": "health"})
    assert reply["status"] == "success" and reply["ready"] is True
    assert reply["model_manager"] == "up"
    assert "whisper-tiny.en" in [m["name"] for m in reply["models"]]


def test_word_error_rate_is_under_the_bound(bus):
    wers = []
    for sentence in SENTENCES:
        reply = transcribe_json(bus, speak(sentence), language="en", request_id=sentence[:10])
        assert reply["status"] == "success", reply
        assert reply["request_id"] == sentence[:10]
        wers.append(word_error_rate(sentence, reply["text"]))
    assert np.mean(wers) < MAX_MEAN_WER, list(zip(SENTENCES, wers, strict=True))


def test_msgpack_int16_bytes_and_any_sample_rate(bus):
    audio = speak(SENTENCES[4], sample_rate=44100)
    pcm = (audio * 32767).astype("<i2").tobytes()
    reply = bus.request(
        {"action": "transcribe", "audio_data": pcm, "dtype": "int16", "sample_rate": 44100},
        encoding="msgpack",
    )
    assert reply["status"] == "success", reply
    assert word_error_rate(SENTENCES[4], reply["text"]) < 0.5


def test_a_minute_of_speech_comes_back_whole_with_its_timing(bus):
    pause = np.zeros(int(0.8 * 16000), np.float32)
    sentences = SENTENCES * 3  # about 75 s: three Whisper windows
    audio = np.concatenate([part for s in sentences for part in (speak(s), pause)])
    reply = bus.request(
        {"action": "transcribe", "audio_data": audio.astype("<f4").tobytes(), "dtype": "float32",
         "model_pref": "whisper-tiny.en"},
        encoding="msgpack",
    )
    assert reply["status"] == "success", reply
    assert word_error_rate(" ".join(sentences), reply["text"]) < MAX_MEAN_WER + 0.05, reply["text"]
    assert set(reply["timing"]) == {"prepare_ms", "queue_ms", "compute_ms", "batch_size"}
    assert reply["timing"]["batch_size"] == 1 and reply["timing"]["compute_ms"] > 0


def test_queue_for_batch_then_get_result(bus):
    queued = bus.request(
        {
            "action": "queue_for_batch",
            "audio_data": speak(SENTENCES[1]).tolist(),
            "sample_rate": 16000,
            "language": "en",
            "request_id": "my_request_1",
        }
    )
    assert queued == {"status": "queued", "request_id": "my_request_1"}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        result = bus.request({"action": "get_result", "request_id": "my_request_1"})
        if result["status"] != "pending":
            break
        time.sleep(0.1)
    assert result["status"] == "success", result
    assert word_error_rate(SENTENCES[1], result["text"]) < 0.5
    # Kept until fetched: a second fetch finds nothing.
    again = bus.request({"action": "get_result", "request_id": "my_request_1"})
    assert again["status"] == "error" and again["error"]["code"] == "not_found"


def test_queue_for_batch_without_request_id_gets_one(bus):
    queued = bus.request({"action": "queue_for_batch", "audio_data": speak(SENTENCES[2]).tolist()})
    assert queued["status"] == "queued" and queued["request_id"]


def test_duplicate_queued_request_id_is_refused(bus):
    item = {"action": "queue_for_batch", "audio_data": speak(SENTENCES[3]).tolist(), "request_id": "dup"}
    assert bus.request(item)["status"] == "queued"
    again = bus.request(item)
    assert again["error"]["code"] == "duplicate_request_id"


def test_batch_transcribe_keeps_order_and_isolates_bad_items(bus):
    batch = [
        {"audio_data": speak(s).tolist(), "sample_rate": 16000, "request_id": f"b{i}"}
        for i, s in enumerate(SENTENCES[:4])
    ]
    batch.insert(2, {"audio_data": [], "request_id": "empty"})
    reply = bus.request({"action": "batch_transcribe", "batch_data": batch})
    assert reply["status"] == "success"
    results = reply["results"]
    assert [r["request_id"] for r in results] == ["b0", "b1", "empty", "b2", "b3"]
    assert results[2]["status"] == "error" and results[2]["error"]["code"] == "invalid_audio"
    texts = [r["text"] for r in results if r["status"] == "success"]
    for sentence, text in zip(SENTENCES[:4], texts, strict=True):
        assert word_error_rate(sentence, text) < 0.5, (sentence, text)


def test_concurrent_clients_are_batched_and_each_gets_its_own_text(bus):
    clients = 8
    replies: list[dict | None] = [None] * clients
    start = threading.Barrier(clients)

    def client(i: int) -> None:
        audio = speak(SENTENCES[i])
        start.wait()
        replies[i] = transcribe_json(bus, audio, request_id=f"c{i}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    # On a small CPU the cost model rightly picks batch size 1 for CTranslate2 Whisper (batching
    # does not pay there), so this test pins the configured sizes to see batches form.
    with fixed_batching(bus, bus.stt_address):
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    for i, reply in enumerate(replies):
        assert reply is not None and reply["status"] == "success", reply
        assert reply["request_id"] == f"c{i}"
        assert word_error_rate(SENTENCES[i], reply["text"]) < 0.5, (SENTENCES[i], reply["text"])
    stats = bus.request({"action": "stats"})
    tiny = next(m for m in stats["models"] if m["model"] == "whisper-tiny.en")
    assert tiny["max_batch_size_seen"] > 1, tiny
    assert sum(tiny["batch_size_histogram"].values()) == tiny["batches"]


def test_model_client_generate_batch_mode(bus):
    client = ModelClient(ClientConfig(stt_address=bus.stt_address))
    audio = speak(SENTENCES[5])
    reply = client.generate(
        prompt="Batch transcribe audio to text",
        model_pref="quality",
        batch_mode=True,
        batch_data=[
            {"audio_data": audio, "sample_rate": 16000, "request_id": "s1"},
            {"audio_data": audio.tolist(), "sample_rate": 16000, "request_id": "s2"},
            {"audio_data": np.full(100, np.nan), "request_id": "nan"},
        ],
    )
    assert reply["status"] == "success"
    s1, s2, bad = reply["results"]
    assert s1["request_id"] == "s1" and word_error_rate(SENTENCES[5], s1["text"]) < 0.5
    assert s2["text"] == s1["text"]
    assert bad["status"] == "error" and bad["error"]["code"] == "invalid_audio"


def test_model_client_single_item(bus):
    client = ModelClient(ClientConfig(stt_address=bus.stt_address))
    reply = client.generate(audio_data=speak(SENTENCES[6]), sample_rate=16000, request_id="one")
    assert reply["status"] == "success"
    assert word_error_rate(SENTENCES[6], reply["results"][0]["text"]) < 0.5


def test_model_client_says_when_the_bus_is_not_running():
    from conftest import free_port

    client = ModelClient(ClientConfig(stt_address=f"tcp://127.0.0.1:{free_port()}", connect_timeout_s=0.5))
    started = time.monotonic()
    reply = client.generate(audio_data=np.zeros(1600, np.float32))
    assert reply["status"] == "error" and reply["error"]["code"] == "bus_unavailable"
    assert "scripts/run.sh" in reply["error"]["message"]
    assert time.monotonic() - started < 10


def test_model_pref_selects_models(bus):
    models = {m["name"] for m in bus.request({"action": "health"})["models"]}
    audio = speak(SENTENCES[0])
    fast = transcribe_json(bus, audio, model_pref="fast")
    assert fast["model"] == "whisper-tiny.en"
    quality = transcribe_json(bus, audio, model_pref="quality")
    assert quality["model"] == ("whisper-base" if "whisper-base" in models else "whisper-tiny.en")
    unknown = transcribe_json(bus, audio, model_pref="whisper-huge")
    assert unknown["error"]["code"] == "unknown_model"


def test_multilingual_model_detects_and_selects_language(bus):
    models = {m["name"] for m in bus.request({"action": "health"})["models"]}
    if "whisper-base" not in models:
        pytest.skip("the multilingual extra is not installed")
    german = speak("Guten Morgen, wie geht es dir heute?", voice="de")
    detected = transcribe_json(bus, german, model_pref="whisper-base")
    assert detected["status"] == "success", detected
    assert detected["language"] == "de"
    forced = transcribe_json(bus, speak(SENTENCES[0]), model_pref="whisper-base", language="en")
    assert forced["language"] == "en"
    assert word_error_rate(SENTENCES[0], forced["text"]) < 0.5
    # An English-only model refuses another language.
    refused = transcribe_json(bus, german, model_pref="whisper-tiny.en", language="de")
    assert refused["error"]["code"] == "invalid_field"


# --- bad input: a clear error reply each time, and the agent keeps serving ----------------


def _nan_bytes() -> bytes:
    audio = np.zeros(16000, "<f4")
    audio[100] = np.nan
    return audio.tobytes()


BAD_INPUTS = [
    (b"{not json", "bad_request"),
    (b"\xc1\xff\x00garbage", "bad_request"),
    (json.dumps([1, 2, 3]).encode(), "bad_request"),
    ({"action": "dance"}, "unknown_action"),
    ({"audio_data": [0.0] * 10}, "missing_field"),
    ({"action": "transcribe"}, "missing_field"),
    ({"action": "transcribe", "audio_data": []}, "invalid_audio"),
    ({"action": "transcribe", "audio_data": [0.0, "x"]}, "invalid_audio"),
    ({"action": "transcribe", "audio_data": [0.1] * 1600, "sample_rate": 0}, "invalid_audio"),
    ({"action": "transcribe", "audio_data": [0.1] * 1600, "language": 5}, "invalid_field"),
    ({"action": "transcribe", "audio_data": [0.1] * 1600, "timeout_ms": -1}, "invalid_field"),
    ({"action": "get_result"}, "missing_field"),
    ({"action": "get_result", "request_id": "never-queued"}, "not_found"),
    ({"action": "batch_transcribe", "batch_data": []}, "invalid_field"),
    ({"action": "batch_transcribe", "batch_data": [{}] * 1000}, "too_many_items"),
]


@pytest.mark.parametrize(
    ("message", "code"), BAD_INPUTS, ids=[c + str(i) for i, (_, c) in enumerate(BAD_INPUTS)]
)
def test_bad_json_input_gets_a_clear_error(bus, message, code):
    reply = bus.request(message, timeout_s=30)
    assert reply["status"] == "error" and reply["error"]["code"] == code, reply
    assert reply["error"]["message"]


BAD_MSGPACK = [
    ({"action": "transcribe", "audio_data": _nan_bytes(), "dtype": "float32"}, "invalid_audio"),
    ({"action": "transcribe", "audio_data": b"\x00" * 3201, "dtype": "int16"}, "invalid_audio"),
    ({"action": "transcribe", "audio_data": b"\x00" * 3200, "dtype": "int64"}, "invalid_audio"),
    ({"action": "transcribe", "audio_data": b"\x00" * 3200}, "missing_field"),
    (
        {"action": "transcribe", "audio_data": np.full(1600, 3000.0, "<f4").tobytes(), "dtype": "float32"},
        "invalid_audio",
    ),
    # Ten minutes of 16 kHz int16 audio (19 MB): refused with a reason, not a hang or a crash.
    ({"action": "transcribe", "audio_data": b"\x00\x01" * (16000 * 601), "dtype": "int16"}, "audio_too_long"),
]


@pytest.mark.parametrize(
    ("message", "code"), BAD_MSGPACK, ids=[c + str(i) for i, (_, c) in enumerate(BAD_MSGPACK)]
)
def test_bad_msgpack_input_gets_a_clear_error(bus, message, code):
    reply = bus.request(message, encoding="msgpack", timeout_s=30)
    assert reply["status"] == "error" and reply["error"]["code"] == code, reply


def test_nan_in_json_audio_is_refused(bus):
    # Python's json module writes NaN as a bare literal, and other clients may too.
    raw = json.dumps({"action": "transcribe", "audio_data": [0.0, float("nan"), 0.1]}).encode()
    assert bus.request(raw)["error"]["code"] == "invalid_audio"


def test_over_ten_minutes_of_json_audio_is_refused(bus):
    reply = transcribe_json(bus, np.zeros(8000 * 601, np.float32), sample_rate=8000)
    assert reply["error"]["code"] == "audio_too_long"


def test_multipart_garbage_is_answered_and_the_agent_keeps_serving(bus):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(bus.stt_address)
    try:
        sock.send_multipart([b"", b"one", b"two"])
        assert sock.poll(10_000)
        frames = sock.recv_multipart()
        assert json.loads(frames[-1])["error"]["code"] == "bad_request"
    finally:
        sock.close()
    assert bus.request({"action": "health"})["ready"] is True
    ok = transcribe_json(bus, speak(SENTENCES[7]))
    assert ok["status"] == "success"


def test_msgpack_reply_for_msgpack_request(bus):
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(bus.stt_address)
    try:
        sock.send(msgpack.packb({"action": "health"}))
        assert sock.poll(10_000)
        assert msgpack.unpackb(sock.recv())["status"] == "success"
    finally:
        sock.close()


def test_runtime_reconfiguration_and_the_choice_in_stats(bus):
    with fixed_batching(bus, bus.stt_address, max_batch_size=1, min_batch_size=1) as reply:
        policy = reply["models"][0]["policy"]
        assert (policy["dynamic_batching"], policy["max_batch_size"]) == (False, 1)
        stats = bus.request({"action": "stats"})
        tiny = next(m for m in stats["models"] if m["model"] == "whisper-tiny.en")
        assert tiny["chosen_batch_size"] == 1 and "configured" in tiny["choice_reason"]
    stats = bus.request({"action": "stats"})
    tiny = next(m for m in stats["models"] if m["model"] == "whisper-tiny.en")
    assert tiny["policy"]["dynamic_batching"] is True and tiny["policy"]["max_batch_size"] == 8
    assert tiny["choice_reason"]  # why the cost model chose its size


@pytest.mark.parametrize(
    ("settings", "code"),
    [
        ({"max_batch_size": 0}, "invalid_field"),
        ({"min_batch_size": 99}, "invalid_field"),
        ({"bogus": 1}, "invalid_field"),
        ("max=4", "invalid_field"),
    ],
)
def test_bad_reconfiguration_is_refused_and_changes_nothing(bus, settings, code):
    reply = bus.request({"action": "configure", "settings": settings})
    assert reply["status"] == "error" and reply["error"]["code"] == code, reply
    stats = bus.request({"action": "stats"})
    assert all(m["policy"]["max_batch_size"] == 8 for m in stats["models"])
