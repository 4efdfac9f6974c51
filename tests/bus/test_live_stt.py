"""Live speech-to-text over real sockets, on the real model: stream_open, stream_audio,
next_event, stream_close, cancel and hang-up, with audio sent as a microphone would."""

from __future__ import annotations

import threading
import time
import urllib.request

import msgpack
import numpy as np
import pytest
import zmq
from conftest import fixed_batching
from speech import SENTENCES, speak, word_error_rate

from agents.model_client import ClientConfig, LiveStreamError, ModelClient

pytestmark = pytest.mark.slow

RATE = 16_000
CHUNK = 1600  # 100 ms


def clip() -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    """Three utterances with pauses; the first is two sentences long, for partials."""
    texts = [f"{SENTENCES[0]} {SENTENCES[1]}", SENTENCES[2], SENTENCES[6]]
    pieces, spans, t = [np.zeros(RATE // 2, np.float32)], [], 0.5
    for text in texts:
        spoken = speak(text)
        pieces += [spoken, np.zeros(RATE, np.float32)]
        spans.append((text, t, t + len(spoken) / RATE))
        t += len(spoken) / RATE + 1.0
    return np.concatenate(pieces), spans


def live_client(bus) -> ModelClient:
    return ModelClient(ClientConfig(stt_address=bus.stt_address, timeout_s=120.0))


def replay(bus, audio: np.ndarray, results: list, pace: float = 1.0, key: object = None) -> None:
    """Send `audio` in 100 ms chunks at `pace` x real time; a second socket reads events."""
    events: list[tuple[float, dict]] = []
    with live_client(bus).live(language="en") as stream:
        def read() -> None:
            reader = live_client(bus).context.socket(zmq.REQ)
            reader.connect(bus.stt_address)
            try:
                while True:
                    reader.send(msgpack.packb({"action": "next_event", "request_id": stream.request_id,
                                               "timeout_ms": 500}))
                    assert reader.poll(60_000)
                    reply = msgpack.unpackb(reader.recv())
                    if reply["status"] != "success":
                        return
                    events.extend((time.monotonic(), e) for e in reply["events"])
                    if reply["done"]:
                        return
            finally:
                reader.close(linger=0)

        reading = threading.Thread(target=read)
        reading.start()
        began = time.monotonic()
        for k, start in enumerate(range(0, len(audio), CHUNK)):
            time.sleep(max(0.0, began + (k + 1) * CHUNK / RATE / pace - time.monotonic()))
            events.extend((time.monotonic(), e) for e in stream.send(audio[start : start + CHUNK]))
        events.extend((time.monotonic(), e) for e in stream.close())
        assert stream.done
        reading.join(timeout=30)
    ordered = sorted(events, key=lambda te: te[1]["seq"])  # two sockets: arrival order may differ
    assert [e["seq"] for _, e in ordered] == list(range(len(ordered)))
    results.append(ordered if key is None else (key, ordered))


def stt_stats(bus) -> dict:
    reply = bus.request({"action": "stats"})
    assert reply["status"] == "success"
    return reply


def check_utterances(events: list, spans: list) -> None:
    finals = [e for _, e in events if e["type"] == "final"]
    assert [f["utterance"] for f in finals] == list(range(len(spans))), [
        (e["type"], e["utterance"], e["text"], e["start_s"], e["end_s"]) for _, e in events]
    for final, (text, start, end) in zip(finals, spans, strict=True):
        assert word_error_rate(text, final["text"]) <= 0.35, (text, final["text"])
        assert abs(final["start_s"] - start) < 0.5 and abs(final["end_s"] - end) < 0.5, (final, start, end)
    for index in range(len(spans)):  # each utterance: started, ended, final, in that order
        own = [e["type"] for _, e in events if e["utterance"] == index and e["type"] != "partial"]
        assert own == ["speech_started", "speech_ended", "final"], own


def test_three_utterances_give_three_finals_in_order_with_partials_first(bus):
    audio, spans = clip()
    results: list = []
    replay(bus, audio, results)
    (events,) = results
    check_utterances(events, spans)
    # The long first utterance shows partials before its final, and none after it.
    kinds = [(e["type"], e["utterance"]) for _, e in events]
    first_final = kinds.index(("final", 0))
    assert ("partial", 0) in kinds[:first_final], kinds
    assert ("partial", 0) not in kinds[first_final:]


def test_four_concurrent_streams_batch_together(bus):
    before = stt_stats(bus)["live"]
    results: list = []
    silence = np.zeros(RATE // 2, np.float32)
    clips = {}
    for sentence in (SENTENCES[1], SENTENCES[2], SENTENCES[3], SENTENCES[6]):  # tiny.en gets these right
        spoken = speak(sentence)
        clips[sentence] = (np.concatenate([silence, spoken, silence, silence]),
                           [(sentence, 0.5, 0.5 + len(spoken) / RATE)])
    threads = [threading.Thread(target=replay, args=(bus, audio, results), kwargs={"key": sentence})
               for sentence, (audio, _) in clips.items()]
    # Decodes that come together wait up to 1 s for each other, whatever this machine's load
    # (on a busy CPU the partial budget keeps few decodes in flight at once).
    with fixed_batching(bus, bus.stt_address, min_batch_size=4, max_batch_size=8, max_batch_wait_ms=1000,
                        lone_request_wait_ms=1000):
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
    assert len(results) == 4
    for sentence, events in results:
        check_utterances(events, clips[sentence][1])
    after = stt_stats(bus)["live"]
    assert after["open_streams"] == 0
    assert after["events"]["final"] - before["events"].get("final", 0) == 4
    grown = {int(size): count - before["decode_batch_size_histogram"].get(size, 0)
             for size, count in after["decode_batch_size_histogram"].items()}
    assert max(size for size, count in grown.items() if count > 0) > 1, grown
    # The same figures reach Prometheus (the agent sends them with its pings).
    deadline = time.monotonic() + 30
    while True:
        text = urllib.request.urlopen(bus.stt_metrics_url, timeout=5).read().decode()
        sample = 'voicebus_live_events_total{type="final"}'
        finals = [line for line in text.splitlines() if line.startswith(sample)]
        if finals and float(finals[0].split()[-1]) >= after["events"]["final"] or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert finals and float(finals[0].split()[-1]) >= after["events"]["final"], text[-2000:]
    assert "voicebus_live_decode_batch_size_bucket" in text


def test_silence_costs_no_decode_and_gives_no_text(bus):
    before = stt_stats(bus)["live"]
    rng = np.random.default_rng(0)
    with live_client(bus).live() as stream:
        events = []
        for _ in range(20):
            events += stream.send((rng.standard_normal(CHUNK * 5) * 0.002).astype(np.float32))
        events += stream.close()
    assert events == []
    after = stt_stats(bus)["live"]
    assert after["decodes"] == before["decodes"]


def test_cancel_and_hang_up_end_a_stream(bus):
    speech = speak(SENTENCES[3])
    stream = live_client(bus).live(language="en")
    stream.send(speech[: RATE * 2])
    reply = bus.request({"action": "cancel", "request_id": stream.request_id})
    assert reply["status"] == "success" and reply["cancelled"] is True
    with pytest.raises(LiveStreamError) as gone:
        stream.send(speech[: RATE])
    assert gone.value.reply["error"]["code"] == "not_found"
    assert "cancel" in gone.value.reply["error"]["message"]

    ended = stt_stats(bus)["live"]["ended_by"].get("hangup", 0)
    hung_up = live_client(bus).live(language="en")
    hung_up.send(speech[: RATE * 2])
    hung_up._close_socket()  # the client goes away without closing its stream
    deadline = time.monotonic() + 30
    while stt_stats(bus)["live"]["ended_by"].get("hangup", 0) == ended:
        assert time.monotonic() < deadline, "the hung-up stream was not ended"
        time.sleep(0.2)
    reply = bus.request({"action": "stream_audio", "request_id": hung_up.request_id, "audio_data": [0.0]})
    assert reply["error"]["code"] == "not_found" and "hung up" in reply["error"]["message"]


def test_bad_input_is_refused_and_the_stream_carries_on(bus):
    opened = bus.request({"action": "stream_open", "sample_rate": 16000, "dtype": "int16"})
    assert opened["status"] == "success"
    stream_id = opened["request_id"]

    def audio(**fields) -> dict:
        return bus.request({"action": "stream_audio", "request_id": stream_id, **fields}, encoding="msgpack")

    pcm = np.zeros(CHUNK, "<i2").tobytes()
    assert audio(audio_data=pcm, dtype="float32")["error"]["code"] == "invalid_audio"
    assert audio(audio_data=pcm, sample_rate=8000)["error"]["code"] == "invalid_audio"
    assert audio(audio_data=[1.5e6])["error"]["code"] == "invalid_audio"
    oversize = audio(audio_data=np.zeros(RATE * 11, "<i2").tobytes())
    assert oversize["error"]["code"] == "audio_too_long" and "per chunk" in oversize["error"]["message"]
    ten_seconds = np.zeros(RATE * 10, "<i2").tobytes()
    for _ in range(60):  # limits.max_audio_seconds: 600 s
        assert audio(audio_data=ten_seconds)["status"] == "success"
    too_long = audio(audio_data=pcm)
    assert too_long["error"]["code"] == "audio_too_long"
    assert "max_audio_seconds" in too_long["error"]["message"]
    unknown = bus.request({"action": "stream_audio", "request_id": "no-such-stream", "audio_data": [0.0]})
    assert unknown["error"]["code"] == "not_found"
    closed = bus.request({"action": "stream_close", "request_id": stream_id})
    assert closed["status"] == "success" and closed["done"] is True and closed["events"] == []
    after = audio(audio_data=pcm)
    assert after["error"]["code"] == "not_found" and "stream_close" in after["error"]["message"]
    for bad_open, code in (({"sample_rate": 5}, "invalid_audio"), ({"dtype": "float64"}, "invalid_audio"),
                           ({"vad_threshold": 3}, "invalid_field"), ({"beam_size": 0}, "invalid_field"),
                           ({"model_pref": "no-such-model"}, "unknown_model")):
        assert bus.request({"action": "stream_open", **bad_open})["error"]["code"] == code, bad_open
    assert bus.request({"action": "health"})["ready"] is True
