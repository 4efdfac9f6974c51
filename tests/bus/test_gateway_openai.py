"""The HTTP gateway as OpenAI clients see it: the official `openai` SDK against the gateway of
the session's real bus (started by the launcher with the rest of it)."""

from __future__ import annotations

import base64
import io
import json
import time

import av
import httpx
import numpy as np
import openai
import pytest
from scipy.signal import resample_poly
from speech import SENTENCES, speak, word_error_rate

TEXT = SENTENCES[1]  # "Please call me back when you get this message."
SHORT = "Please call me back."
SPOKEN = " ".join(SENTENCES[:2])


@pytest.fixture(scope="module")
def client(bus) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{bus.http_url}/v1", api_key="unused", max_retries=0, timeout=120)


def encode_upload(audio: np.ndarray, container: str, codec: str, rate: int = 16000) -> bytes:
    """16 kHz float32 speech as a file in `container`, encoded by FFmpeg (PyAV)."""
    if rate != 16000:
        audio = resample_poly(audio, rate // 1000, 16).astype(np.float32)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(audio.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return buffer.getvalue()


def decode_speech(data: bytes, response_format: str) -> np.ndarray:
    """Speech bytes from the gateway as 16 kHz float32, decoded by FFmpeg (PyAV)."""
    if response_format == "pcm":
        pcm = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768
        return resample_poly(pcm, 2, 3).astype(np.float32)
    with av.open(io.BytesIO(data)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=16000)
        pieces = [out.to_ndarray().reshape(-1) for frame in container.decode(audio=0)
                  for out in resampler.resample(frame)]
    return np.concatenate(pieces)


def wav_bytes(audio: np.ndarray) -> bytes:
    return encode_upload(audio, "wav", "pcm_s16le")


@pytest.fixture(scope="module")
def speech_wav() -> tuple[np.ndarray, bytes]:
    audio = np.concatenate([speak(SENTENCES[0]), np.zeros(8000, np.float32), speak(SENTENCES[1])])
    return audio, wav_bytes(audio)


def test_transcription_formats_with_word_and_segment_timestamps(client, speech_wav):
    audio, data = speech_wav
    duration = len(audio) / 16000
    text = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", data))
    assert word_error_rate(SPOKEN, text.text) < 0.3, text.text
    plain = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", data),
                                               response_format="text")
    assert plain.strip() == text.text
    verbose = client.audio.transcriptions.create(
        model="whisper-1", file=("a.wav", data), response_format="verbose_json",
        timestamp_granularities=["word", "segment"])
    assert verbose.language == "english" and abs(verbose.duration - duration) < 0.05
    assert len(verbose.segments) == 2, verbose.segments  # a pause between the two sentences
    words = verbose.words
    assert [w.word.strip(".,").lower() for w in words][-3:] == ["get", "this", "message"]
    for items in (verbose.segments, words):
        starts = [item.start for item in items]
        assert starts == sorted(starts), "times must not go back"
        assert all(0 <= item.start <= item.end <= duration + 0.01 for item in items)
    assert verbose.segments[0].end <= verbose.segments[1].start
    assert all(0 <= w.probability <= 1 for w in words)  # type: ignore[attr-defined]
    srt = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", data), response_format="srt")
    assert srt.startswith("1\n00:00:00,") and "\n2\n" in srt and "-->" in srt
    vtt = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", data), response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:0") and vtt.count("-->") == 2


@pytest.mark.parametrize(("name", "container", "codec", "rate"), [
    ("a.mp3", "mp3", "libmp3lame", 16000), ("a.ogg", "ogg", "libopus", 48000),
    ("a.m4a", "ipod", "aac", 16000), ("a.webm", "webm", "libopus", 48000), ("a.flac", "flac", "flac", 16000),
])
def test_uploads_in_any_format_ffmpeg_reads(client, name, container, codec, rate):
    data = encode_upload(speak(TEXT), container, codec, rate)
    reply = client.audio.transcriptions.create(model="whisper-1", file=(name, data))
    assert word_error_rate(TEXT, reply.text) < 0.3, (name, reply.text)


def test_prompt_and_temperature_reach_the_model(client, speech_wav):
    _, data = speech_wav
    reply = client.audio.transcriptions.create(
        model="whisper-1", file=("a.wav", data), response_format="verbose_json",
        prompt="Quick Brown Fox Incorporated", temperature=0.4)
    assert reply.segments and all(s.temperature >= 0.4 for s in reply.segments)
    assert "Brown Fox" in reply.text, reply.text  # the prompt's capitals steer the decoder


def test_streamed_transcription_events(client, speech_wav):
    _, data = speech_wav
    events = list(client.audio.transcriptions.create(model="gpt-4o-mini-transcribe", file=("a.wav", data),
                                                     stream=True))
    kinds = [e.type for e in events]
    assert kinds == ["transcript.text.delta"] * (len(events) - 1) + ["transcript.text.done"]
    assert "".join(e.delta for e in events[:-1]) == events[-1].text
    assert word_error_rate(SPOKEN, events[-1].text) < 0.3


def test_translation_on_the_multilingual_model(client):
    said = "Guten Morgen. Ich möchte heute ein Buch kaufen und danach einen Kaffee trinken."
    german = speak(said, voice="de")
    reply = client.audio.translations.create(model="whisper-1", file=("de.wav", wav_bytes(german)))
    words = set(reply.text.lower().replace(".", " ").replace(",", " ").split())
    assert {"good", "morning"} <= words and words & {"book", "coffee"}, reply.text
    assert not words & {"guten", "morgen", "buch", "kaffee"}, reply.text


@pytest.mark.parametrize("response_format", ["mp3", "opus", "aac", "flac", "wav", "pcm"])
def test_speech_in_every_format_says_the_words(client, bus, response_format):
    reply = client.audio.speech.create(model="tts-1", voice="alloy", input=SHORT,
                                       response_format=response_format)
    audio = decode_speech(reply.content, response_format)
    assert 0.5 < len(audio) / 16000 < 5.0
    heard = bus.request({"action": "transcribe", "audio_data": audio.tolist()})
    assert word_error_rate(SHORT, heard["text"]) <= 0.25, (response_format, heard["text"])


def test_streamed_speech_arrives_sentence_by_sentence(client):
    text = " ".join(SENTENCES[:3])
    started = time.monotonic()
    arrivals: list[tuple[float, int]] = []
    with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="nova", input=text, response_format="pcm",
            stream_format="audio") as response:
        for piece in response.iter_bytes(4096):
            arrivals.append((time.monotonic() - started, len(piece)))
    first, last = arrivals[0][0], arrivals[-1][0]
    total_seconds = sum(n for _, n in arrivals) / 2 / 24000
    assert total_seconds > 5.0  # three sentences
    # The first sentence comes out alone: most of the audio is made after its bytes left.
    assert first < 0.6 * last, arrivals[:3]


def test_speech_as_server_sent_events(bus):
    body = {"model": "tts-1", "voice": "alloy", "input": "Hello there. How are you?",
            "response_format": "pcm", "stream_format": "sse"}
    response = httpx.post(f"{bus.http_url}/v1/audio/speech", json=body, timeout=120)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    assert [e["type"] for e in events][-1] == "speech.audio.done"
    audio = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta")
    assert len(audio) / 2 / 24000 > 1.0


def test_mixed_voice_and_voicebus_names(client):
    reply = client.audio.speech.create(model="kokoro-82m", voice="alloy(2)+jm_kumo(1)", input="Hello there.",
                                       response_format="wav")
    assert len(decode_speech(reply.content, "wav")) > 8000


def test_bad_requests_raise_bad_request_error(client):
    with pytest.raises(openai.BadRequestError) as raised:
        client.audio.transcriptions.create(model="whisper-1", file=("notes.txt", b"this is not audio at all"))
    assert raised.value.code == "invalid_audio"
    with pytest.raises(openai.BadRequestError):
        client.audio.transcriptions.create(model="whisper-1", file=("empty.wav", b""))
    with pytest.raises(openai.BadRequestError) as raised:
        client.audio.speech.create(model="tts-1", voice="alloy", input="")
    assert raised.value.body["param"] == "input"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as raised:
        client.audio.speech.create(model="tts-1", voice="nobody_here", input="Hello.")
    assert raised.value.code == "unknown_voice"
    with pytest.raises(openai.BadRequestError):
        client.audio.speech.create(model="tts-1", voice="alloy", input="Hello.", response_format="ogg")  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError) as raised:
        client.audio.transcriptions.create(model="no-such-model", file=("a.wav", wav_bytes(speak(TEXT))))
    assert raised.value.code == "unknown_model"


def test_models_and_voices_are_listed(client, bus):
    models = {m.id for m in client.models.list()}
    assert {"whisper-1", "tts-1", "whisper-tiny.en", "kokoro-82m"} <= models
    voices = httpx.get(f"{bus.http_url}/v1/audio/voices").json()
    assert {"alloy", "jf_alpha"} <= set(voices["voices"])
