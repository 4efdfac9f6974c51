"""Whisper's window policy end to end: real bus, real sockets, real tiny.en."""

from __future__ import annotations

import threading

import numpy as np
from speech import SENTENCES, speak, word_error_rate


def transcribe(bus, audio: np.ndarray, **fields) -> dict:
    return bus.request({"action": "transcribe", "audio_data": audio.tolist(), "sample_rate": 16000, **fields})


def tiny_stats(bus) -> dict:
    return next(m for m in bus.request({"action": "stats"})["models"] if m["model"] == "whisper-tiny.en")


def test_silence_is_empty_text_and_speech_says_whether_it_was_cut(bus):
    silence = transcribe(bus, np.zeros(3 * 16000, np.float32), model_pref="whisper-tiny.en")
    assert silence["status"] == "success" and silence["text"] == "" and silence["truncated"] is False
    reply = transcribe(bus, speak(SENTENCES[1]), model_pref="whisper-tiny.en")
    assert word_error_rate(SENTENCES[1], reply["text"]) == 0 and reply["truncated"] is False
    bad = transcribe(bus, speak(SENTENCES[1]), vad="no")
    assert bad["status"] == "error" and bad["error"]["code"] == "invalid_field"


def test_short_and_long_requests_batch_by_window_length(bus):
    short = speak(SENTENCES[0])
    long = np.concatenate([speak(s) for s in SENTENCES[:5]])  # about 15 s: another window length
    replies: list[dict] = []

    def send(audio: np.ndarray) -> None:
        replies.append(transcribe(bus, audio, model_pref="whisper-tiny.en"))

    threads = [threading.Thread(target=send, args=(a,)) for a in (short, long, short, long)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert [r["status"] for r in replies] == ["success"] * 4
    buckets = tiny_stats(bus)["buckets"]
    assert len(buckets) >= 2, buckets  # each window length learns its own batch size
