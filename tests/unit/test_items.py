"""The typed records of a client's items (agents/items.py) and the engines' rules they share:
every field's wrong value is refused with its code and a message naming the field, strictly
(a bool is not a number, a str must be UTF-8, a number finite), and a good item becomes the
engine request it always became."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from agents.items import SynthesizeItem, TranscribeItem, synthesize_item, transcribe_item
from agents.services import parse_stt_item, parse_tts_item
from model_manager.config import Limits
from model_manager.engines.kokoro.engine import SPEECH_MESSAGES, SpeechFields
from model_manager.engines.whisper.request import DecodeFields, check_details, decode_fields, prepare_request
from model_manager.engines.whisper.window_policy import WindowPolicy
from model_manager.errors import BusError
from model_manager.fields import checked

LIMITS = Limits(max_audio_seconds=2.0, max_text_chars=200)
AUDIO = {"audio_data": [0.1] * 160}
TEXT = {"text": "Hello there."}
SURROGATE = "ok\ud800"

# (field, a bad value): every field of a transcribe item, its wrong types and out-of-range values.
BAD_STT = [
    ("protocol", 2), ("protocol", "1"),
    ("request_id", [1]), ("request_id", {"a": 1}),
    ("priority", "urgent"), ("priority", ["bulk"]),
    ("timeout_ms", 0), ("timeout_ms", True), ("timeout_ms", float("inf")), ("timeout_ms", "100"),
    ("model_pref", 3), ("model_pref", SURROGATE),
    ("language", 5), ("language", ["en"]), ("language", SURROGATE),
    ("task", "summarise"), ("task", 1), ("task", ""),
    ("beam_size", 0), ("beam_size", 11), ("beam_size", True), ("beam_size", 2.0), ("beam_size", "2"),
    ("beam_size", 2**70),
    ("vad", "no"), ("vad", 1), ("vad", 0.0),
    ("prompt", 7), ("prompt", "x" * 10_001), ("prompt", SURROGATE),
    ("temperature", 1.5), ("temperature", -0.1), ("temperature", True), ("temperature", "0.2"),
    ("temperature", float("nan")), ("temperature", 10**400),
    ("timestamps", "char"), ("timestamps", True), ("timestamps", ["word"]),
]

BAD_TTS = [
    ("priority", "urgent"), ("timeout_ms", -1), ("model_pref", []),
    ("text", ""), ("text", "  \n"), ("text", 42), ("text", ["Hi."]), ("text", "Hi \udcff"),
    ("voice", ["jf_alpha"]), ("voice", 1), ("voice", SURROGATE),
    ("speed", "fast"), ("speed", True), ("speed", float("nan")), ("speed", float("-inf")), ("speed", 10**400),
    ("format", "mp3"), ("format", None), ("format", 1),
    ("output_path", ""), ("output_path", "a\x00b"), ("output_path", 5), ("output_path", SURROGATE),
]


def refusal(parse: Any, fields: dict[str, Any]) -> BusError:
    with pytest.raises(BusError) as info:
        parse(fields, LIMITS)
    return info.value


@pytest.mark.parametrize(("field", "value"), BAD_STT, ids=[f"{f}={v!r:.20}" for f, v in BAD_STT])
def test_a_bad_transcribe_field_is_invalid_field_naming_it(field, value):
    error = refusal(parse_stt_item, {**AUDIO, field: value})
    assert error.code == "invalid_field" and error.message.startswith(f"{field} "), error


@pytest.mark.parametrize(("field", "value"), BAD_TTS, ids=[f"{f}={v!r:.20}" for f, v in BAD_TTS])
def test_a_bad_synthesize_field_is_invalid_field_naming_it(field, value):
    error = refusal(parse_tts_item, {**TEXT, field: value})
    assert error.code == "invalid_field" and error.message.startswith(f"{field} "), error


def test_the_messages_say_what_the_field_must_be():
    assert refusal(parse_stt_item, {**AUDIO, "beam_size": True}).message == \
        "beam_size must be an integer in 1..10, got True"
    assert refusal(parse_stt_item, {**AUDIO, "language": 5}).message == "language must be a string, got int"
    assert "lone surrogates" in refusal(parse_stt_item, {**AUDIO, "language": SURROGATE}).message
    assert refusal(parse_stt_item, {**AUDIO, "vad": "no"}).message == "vad must be true or false, got 'no'"
    assert refusal(parse_tts_item, {**TEXT, "speed": True}).message == \
        "speed must be a finite number, got True"
    assert refusal(parse_tts_item, {"text": " "}).message == "text must be a non-empty string"
    assert refusal(parse_tts_item, {**TEXT, "format": "mp3"}).message == \
        "format must be one of ['wav', 'pcm'], got 'mp3'"
    assert refusal(parse_tts_item, {**TEXT, "timeout_ms": True}).message == \
        "timeout_ms must be a number of at least 1, got True"


@pytest.mark.parametrize("fields", [{}, {"text": None}, {"voice": "jf_alpha"}])
def test_text_absent_or_null_is_missing_field(fields):
    error = refusal(parse_tts_item, fields)
    assert (error.code, error.message) == ("missing_field", "text is required")


def test_what_needs_more_than_the_value_is_checked_after_the_record():
    assert refusal(parse_stt_item, {}).code == "missing_field"  # audio_data, by decode_audio
    assert refusal(parse_stt_item, {"audio_data": [float("nan")]}).code == "invalid_audio"
    assert refusal(parse_stt_item, {"audio_data": [0.1], "sample_rate": True}).code == "invalid_audio"
    assert refusal(parse_tts_item, {"text": "x" * 201}).code == "text_too_long"
    outside = refusal(parse_tts_item, {**TEXT, "output_path": "../x.wav"})
    assert outside.code == "invalid_field" and "outside the output directory" in outside.message
    # The first bad field, in the record's order, is the one named: options, then the item's own.
    first = refusal(parse_stt_item, {**AUDIO, "beam_size": 0, "priority": "urgent"})
    assert first.message.startswith("priority ")


def test_a_good_item_becomes_the_engine_request_of_the_fields_it_set():
    request = parse_stt_item({**AUDIO, "language": "de", "task": "translate", "beam_size": 5, "vad": False,
                              "prompt": "Names.", "temperature": 0, "timestamps": "word",
                              "request_id": "r", "priority": "bulk", "timeout_ms": 100.5}, LIMITS)
    audio = request.pop("audio")
    assert audio.dtype == np.float32 and audio.size == 160
    assert request == {"language": "de", "task": "translate", "beam_size": 5, "vad": False,
                       "prompt": "Names.", "temperature": 0.0, "timestamps": "word"}
    assert parse_stt_item({**AUDIO, "language": None, "beam_size": None}, LIMITS).keys() == {"audio"}
    assert parse_tts_item({**TEXT, "voice": "jf_alpha", "speed": 2, "format": "pcm"}, LIMITS) == \
        {"text": "Hello there.", "voice": "jf_alpha", "speed": 2.0}
    assert parse_tts_item({**TEXT, "speed": None, "voice": None}, LIMITS) == {"text": "Hello there."}


def test_the_records_are_typed():
    item = transcribe_item({**AUDIO, "beam_size": 3, "request_id": 7})
    assert isinstance(item, TranscribeItem) and (item.beam_size, item.request_id, item.task) == (3, 7, None)
    item = synthesize_item({**TEXT, "speed": 1})
    assert isinstance(item, SynthesizeItem) and item.speed == 1.0 and isinstance(item.speed, float)
    assert item.format == "wav"


# --- the engines keep the same rules for fields that reach them by other paths ------------------


@pytest.mark.parametrize(("field", "value"), [(f, v) for f, v in BAD_STT if f in DecodeFields.model_fields])
def test_the_whisper_engine_refuses_what_the_agent_refuses(field, value):
    with pytest.raises(BusError) as info:
        prepare_request({"audio": np.zeros(1600, np.float32), field: value}, multilingual=True,
                        known_languages={"en": 0, "de": 1}, model_name="m", policy=WindowPolicy(),
                        vad_default=False, encode_prompt=lambda text: [1])
    assert info.value.code == "invalid_field" and info.value.message.startswith(f"{field} ")


def test_the_whisper_engine_reads_the_checked_fields():
    request = prepare_request({"audio": np.zeros(1600, np.float32), "language": " DE ", "beam_size": 4},
                              multilingual=True, known_languages={"en": 0, "de": 1}, model_name="m",
                              policy=WindowPolicy(), vad_default=False)
    assert (request.language, request.task, request.beam_size, request.vad) == ("de", "transcribe", 4, False)
    assert decode_fields({"vad": True}).given() == {"vad": True}
    assert check_details({"temperature": 0.12345}, lambda text: [1], "m").temperature == 0.123


@pytest.mark.parametrize(("field", "value"), [
    ("text", None), ("text", 42), ("text", " "), ("text", SURROGATE), ("voice", 3),
    ("speed", True), ("speed", "1"), ("speed", float("nan")), ("speed", 0.2), ("speed", 4.5),
    ("speed", 10**400),
])
def test_kokoro_refuses_what_the_agent_refuses_and_its_speed_range(field, value):
    with pytest.raises(BusError) as info:
        checked(SpeechFields, {"text": "Hi.", field: value}, SPEECH_MESSAGES)
    code = "missing_field" if value is None else "invalid_field"
    assert info.value.code == code and info.value.message.startswith(f"{field} ")
    speech = checked(SpeechFields, {"text": "Hi.", "speed": 2}, SPEECH_MESSAGES)
    assert (speech.text, speech.voice, speech.speed) == ("Hi.", None, 2.0)
