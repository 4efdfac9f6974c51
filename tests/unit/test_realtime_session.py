"""A Realtime `session.update`'s session as typed records (agents/gateway/realtime_session.py):
each bad field is refused with its code, its message and its path, and a beta
`transcription_session.update` gives the settings its GA twin gives."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from agents.gateway.realtime_events import RealtimeError, RealtimeSettings
from agents.gateway.realtime_session import REFUSALS, Session

INPUT = "session.audio.input"
FORMAT_TYPES = "use audio/pcm, audio/pcmu or audio/pcma"
PROMPT = "a transcription prompt is not supported on live streams (their decodes batch together without one)"
NOT_SERVER_VAD = "turn_detection must be server_vad or null"


def refusal(session: Any) -> tuple[str, str, str | None]:
    with pytest.raises(RealtimeError) as refused:
        RealtimeSettings().updated(session)
    return refused.value.code, refused.value.message, refused.value.param


def ga(**audio_input: Any) -> dict[str, Any]:
    return {"type": "transcription", "audio": {"input": audio_input}}


@pytest.mark.parametrize("session, code, message, param", [
    ("transcription", "invalid_value", "session must be an object", "session"),
    ({"audio": 5}, "invalid_value", "audio must be an object", "session.audio"),
    ({"audio": {"input": "pcm"}}, "invalid_value", "input must be an object", "session.audio.input"),
    # format
    (ga(format=None), "invalid_value", "format must be an object", f"{INPUT}.format"),
    (ga(format="audio/pcm"), "invalid_value", "format must be an object", f"{INPUT}.format"),
    (ga(format={"type": "audio/opus"}), "unsupported_value",
     f"audio format 'audio/opus' is not supported: {FORMAT_TYPES}", f"{INPUT}.format.type"),
    (ga(format={"type": None}), "unsupported_value",
     f"audio format None is not supported: {FORMAT_TYPES}", f"{INPUT}.format.type"),
    (ga(format={"type": "audio/pcm", "rate": 100}), "invalid_value",
     "rate must be an integer in 8000..48000, got 100", f"{INPUT}.format.rate"),
    (ga(format={"rate": 48001}), "invalid_value",
     "rate must be an integer in 8000..48000, got 48001", f"{INPUT}.format.rate"),
    (ga(format={"rate": 16000.0}), "invalid_value",
     "rate must be an integer in 8000..48000, got 16000.0", f"{INPUT}.format.rate"),
    (ga(format={"rate": True}), "invalid_value",
     "rate must be an integer in 8000..48000, got True", f"{INPUT}.format.rate"),
    (ga(format={"rate": "16000"}), "invalid_value",
     "rate must be an integer in 8000..48000, got '16000'", f"{INPUT}.format.rate"),
    (ga(format={"rate": None}), "invalid_value",
     "rate must be an integer in 8000..48000, got None", f"{INPUT}.format.rate"),
    # transcription
    (ga(transcription=["whisper-1"]), "invalid_value", "transcription must be an object",
     f"{INPUT}.transcription"),
    (ga(transcription={"model": 1}), "invalid_value", "model must be a string, got int",
     f"{INPUT}.transcription.model"),
    (ga(transcription={"language": True}), "invalid_value", "language must be a string, got bool",
     f"{INPUT}.transcription.language"),
    (ga(transcription={"language": "\ud800"}), "invalid_value",
     "language must be UTF-8 text, got a string with lone surrogates", f"{INPUT}.transcription.language"),
    (ga(transcription={"prompt": "Zoë"}), "unsupported_value", PROMPT, f"{INPUT}.transcription.prompt"),
    (ga(transcription={"prompt": 7}), "unsupported_value", PROMPT, f"{INPUT}.transcription.prompt"),
    # turn_detection: a kind not served names turn_detection itself
    (ga(turn_detection="server_vad"), "unsupported_value", NOT_SERVER_VAD, f"{INPUT}.turn_detection"),
    (ga(turn_detection={"type": "semantic_vad"}), "unsupported_value", NOT_SERVER_VAD,
     f"{INPUT}.turn_detection"),
    (ga(turn_detection={"type": None}), "unsupported_value", NOT_SERVER_VAD, f"{INPUT}.turn_detection"),
    (ga(turn_detection={"silence_duration_ms": 5}), "invalid_value",
     "silence_duration_ms must be an integer in 100..10000", f"{INPUT}.turn_detection.silence_duration_ms"),
    (ga(turn_detection={"silence_duration_ms": 500.0}), "invalid_value",
     "silence_duration_ms must be an integer in 100..10000", f"{INPUT}.turn_detection.silence_duration_ms"),
    (ga(turn_detection={"silence_duration_ms": True}), "invalid_value",
     "silence_duration_ms must be an integer in 100..10000", f"{INPUT}.turn_detection.silence_duration_ms"),
    (ga(turn_detection={"threshold": 0.96}), "invalid_value", "threshold must be a number in 0.05..0.95",
     f"{INPUT}.turn_detection.threshold"),
    (ga(turn_detection={"threshold": True}), "invalid_value", "threshold must be a number in 0.05..0.95",
     f"{INPUT}.turn_detection.threshold"),
    (ga(turn_detection={"threshold": "0.5"}), "invalid_value", "threshold must be a number in 0.05..0.95",
     f"{INPUT}.turn_detection.threshold"),
    (ga(turn_detection={"threshold": float("nan")}), "invalid_value",
     "threshold must be a number in 0.05..0.95", f"{INPUT}.turn_detection.threshold"),
    (ga(turn_detection={"threshold": 10**400}), "invalid_value", "threshold must be a number in 0.05..0.95",
     f"{INPUT}.turn_detection.threshold"),
    # beta shape: the error names the field of the GA shape it maps to
    ({"input_audio_format": "mp3"}, "unsupported_value",
     f"audio format 'mp3' is not supported: {FORMAT_TYPES}", f"{INPUT}.format.type"),
    ({"input_audio_format": ["pcm16"]}, "unsupported_value",
     f"audio format \"['pcm16']\" is not supported: {FORMAT_TYPES}", f"{INPUT}.format.type"),
    ({"input_audio_transcription": {"prompt": "Zoë"}}, "unsupported_value", PROMPT,
     f"{INPUT}.transcription.prompt"),
    ({"turn_detection": {"type": "semantic_vad"}}, "unsupported_value", NOT_SERVER_VAD,
     f"{INPUT}.turn_detection"),
])
def test_each_bad_field_is_refused_with_its_code_message_and_path(session, code, message, param):
    assert refusal(session) == (code, message, param)


def test_the_first_bad_field_in_the_records_order_is_the_error():
    session = ga(format={"type": "audio/opus", "rate": True}, transcription={"prompt": "x"},
                 turn_detection={"type": "semantic_vad"})
    assert refusal(session)[2] == f"{INPUT}.format.type"
    del session["audio"]["input"]["format"]
    assert refusal(session)[2] == f"{INPUT}.transcription.prompt"


def test_every_field_of_the_records_has_a_refusal():
    def paths(record: type[BaseModel], prefix: str) -> list[str]:
        found = []
        for name, info in record.model_fields.items():
            found.append(f"{prefix}.{name}")
            nested = [t for t in (info.annotation, *getattr(info.annotation, "__args__", ()))
                      if isinstance(t, type) and issubclass(t, BaseModel)]
            found += [path for t in nested for path in paths(t, f"{prefix}.{name}")]
        return found

    assert set(paths(Session, "session")) | {"session"} == set(REFUSALS)


def test_what_the_gateway_does_not_use_is_ignored_and_what_an_update_leaves_out_stays():
    start = RealtimeSettings(language="de", silence_duration_ms=800, threshold=0.6)
    same = start.updated({"type": "realtime", "include": ["item.input_audio_transcription.logprobs"],
                          "audio": {"output": {"voice": "alloy"}, "input": {
                              "noise_reduction": {"type": "near_field"},
                              "transcription": {"model": "", "prompt": ""},
                              "turn_detection": {"prefix_padding_ms": "any", "create_response": True}}}})
    assert same == start
    assert start.updated({}) == start and start.updated({"audio": None}) == start
    assert start.updated(ga(transcription=None)) == start
    # G.711's rate is the format's: a rate sent with it is not read.
    g711 = start.updated(ga(format={"type": "audio/pcmu", "rate": "sixteen"}))
    assert (g711.format, g711.sample_rate) == ("audio/pcmu", 8000)
    assert start.updated(ga(format={})).sample_rate == 24000
    assert start.updated(ga(transcription={"language": None})).language is None
    assert start.updated(ga(transcription={"language": ""})).language is None
    threshold = start.updated(ga(turn_detection={"threshold": 1 / 4})).threshold
    assert threshold == 0.25 and isinstance(threshold, float)
    assert isinstance(start.updated(ga(turn_detection={"threshold": 0.5 + 0.25})).threshold, float)


@pytest.mark.parametrize("beta, audio_input", [
    ({"input_audio_format": "pcm16"}, {"format": {"type": "audio/pcm", "rate": 24000}}),
    ({"input_audio_format": "g711_ulaw"}, {"format": {"type": "audio/pcmu"}}),
    ({"input_audio_format": "g711_alaw"}, {"format": {"type": "audio/pcma"}}),
    ({"input_audio_transcription": {"model": "gpt-4o-transcribe", "language": "en", "prompt": None}},
     {"transcription": {"model": "gpt-4o-transcribe", "language": "en", "prompt": None}}),
    ({"input_audio_transcription": None}, {"transcription": None}),
    ({"turn_detection": None}, {"turn_detection": None}),
    ({"turn_detection": {"type": "server_vad", "silence_duration_ms": 300, "threshold": 0.2}},
     {"turn_detection": {"type": "server_vad", "silence_duration_ms": 300, "threshold": 0.2}}),
    ({"input_audio_format": "g711_alaw", "input_audio_transcription": {"language": "fr"},
      "turn_detection": {"silence_duration_ms": 1200}},
     {"format": {"type": "audio/pcma"}, "transcription": {"language": "fr"},
      "turn_detection": {"silence_duration_ms": 1200}}),
])
def test_a_beta_session_gives_the_settings_of_its_ga_twin(beta, audio_input):
    start = RealtimeSettings(format="audio/pcm", sample_rate=16000, server_vad=False, language="de")
    assert start.updated(beta) == start.updated(ga(**audio_input))
    assert start.updated(beta).session_object() == start.updated(ga(**audio_input)).session_object()
