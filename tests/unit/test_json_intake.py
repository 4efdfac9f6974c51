"""Client JSON read by orjson: the same messages and the same errors as the standard library's.

`standard` is the decoder as it was with `json` alone; every frame here must come out of
`protocol.decode_request` as it comes out of `standard`, value for value (repr tells an int
from a float and shows NaN) or error for error. The replies' JSON must mean what it meant.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fuzz import json_values

from agents.intake import prepare_frame
from agents.services import STT, TTS
from model_manager import client_json, protocol
from model_manager.config import Limits
from model_manager.errors import BAD_REQUEST, BusError

LIMITS = Limits(max_audio_seconds=2.0)
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def standard(frame: bytes) -> tuple[str, str]:
    """What the standard library made of a JSON frame: ("ok", repr) or (code, message)."""
    try:
        message = json.loads(frame)
    except (UnicodeDecodeError, ValueError) as exc:
        return BAD_REQUEST, f"malformed JSON: {exc}"
    except RecursionError:
        return BAD_REQUEST, "malformed JSON: nested too deeply"
    if not isinstance(message, dict):
        return BAD_REQUEST, f"a request must be a map/object, got {type(message).__name__}"
    return "ok", repr(message)


def decoded(frame: bytes) -> tuple[str, str]:
    try:
        message, encoding = protocol.decode_request(frame)
    except BusError as exc:
        return exc.code, exc.message
    assert encoding is protocol.Encoding.JSON
    return "ok", repr(message)


def nested(depth: int) -> bytes:
    return b'{"a":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


# What orjson refuses or reads otherwise than `json`, and plain frames to compare with.
FRAMES = [
    b'{"audio_data": [0.1, -0.25, 0, 1, -0.0, 1e-7, 5e-324]}',
    b'{"audio_data": [NaN, Infinity, -Infinity]}',
    b'{"audio_data": [1e400, -1e400, 1.7976931348623159e308]}',
    b'{"request_id": 1000000000000000000000000000000}',  # orjson: a float
    b'{"request_id": -9223372036854775809, "n": 18446744073709551615}',
    b'{"audio_data": [0.5, 100000000000000000000]}',
    b'{"x": 1e19, "y": [1e300]}',  # large floats: json reads them the same
    b'{"request_id": "\\ud800", "text": "ok\\udcff"}',  # lone surrogates
    b'{"a": 1, "b": 2, "a": 3}',
    b'{\x00}\x00',  # UTF-16-LE, which json detects
    b'{"a": "\xed\xa0\x80"}',  # a surrogate in UTF-8 bytes
    b'{"a": "\xff"}',
    b'{"a": 1} x',
    b'{"a": [1,]}',
    b'{"a": 01}',
    b'{"a": "\x01"}',
    b"{",
    b'  {"action": "health"}  \n',
    nested(10),
    nested(client_json.DEEPEST_CHECKED),
    nested(client_json.DEEPEST_CHECKED + 1),  # left to json
    nested(1000),  # orjson takes it; json does not
    nested(100_000),
]


@pytest.mark.parametrize("frame", FRAMES, ids=range(len(FRAMES)))
def test_a_frame_decodes_as_the_standard_library_decoded_it(frame):
    assert decoded(frame) == standard(frame)


def test_too_deep_nesting_is_still_bad_request():
    assert decoded(nested(1000)) == (BAD_REQUEST, "malformed JSON: nested too deeply")
    assert decoded(nested(100_000)) == (BAD_REQUEST, "malformed JSON: nested too deeply")


def test_integers_beyond_64_bits_stay_integers():
    frame = b'{"request_id": 100000000000000000000, "n": [-9223372036854775809]}'
    message, _ = protocol.decode_request(frame)
    assert message == {"request_id": 10**20, "n": [-(2**63) - 1]}
    assert isinstance(message["request_id"], int) and isinstance(message["n"][0], int)
    assert protocol.encode_reply(message, protocol.Encoding.JSON) == (
        b'{"request_id":100000000000000000000,"n":[-9223372036854775809]}'
    )


@PROPERTY
@given(json_values.map(lambda v: json.dumps({"v": v}).encode()))
def test_any_value_decodes_as_the_standard_library_decoded_it(frame):
    assert decoded(frame) == standard(frame)


@PROPERTY
@given(st.binary(max_size=200) | st.text(max_size=60).map(str.encode))
def test_any_malformed_frame_gets_the_standard_library_error(frame):
    frame = b"{" + frame
    assert decoded(frame) == standard(frame)


# --- the intake: the error a client gets back ------------------------------------------------


def refusal(service: Any, frame: bytes) -> str | None:
    prepared = prepare_frame(service, LIMITS, frame)
    return prepared.error.code if prepared.error else None


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b'{"action": "transcribe", "audio_data": [0.1, NaN]}', "invalid_audio"),
        (b'{"action": "transcribe", "audio_data": [Infinity, 0.1]}', "invalid_audio"),
        (b'{"action": "transcribe", "audio_data": [-Infinity]}', "invalid_audio"),
        (b'{"action": "transcribe", "audio_data": [1e400]}', "invalid_audio"),
        (b'{"action": "transcribe", "audio_data": [1' + b"0" * 400 + b"]}", "invalid_audio"),
        (b'{"action": "transcribe", "audio_data": [0.1], "timeout_ms": NaN}', "invalid_field"),
        (b'{"action": "transcribe", "audio_data": [0.1], "timeout_ms": Infinity}', "invalid_field"),
        (b'{"action": "transcribe", "audio_data": [0.1], "request_id": [NaN]}', "invalid_field"),
        (b'{"action": "transcribe", "audio_data": [0.1], "language": "\\ud800"}', "invalid_field"),
        (b'{"action": "transcribe", "audio_data": [0.1, 0.2], "sample_rate": 16000}', None),
        (b'{"action": "transcribe", "audio_data": [0.1], "request_id": NaN}', None),
    ],
)
def test_the_intake_refuses_what_it_refused(frame, code):
    assert refusal(STT, frame) == code


@pytest.mark.parametrize("speed", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_a_non_finite_speed_is_invalid_field(speed):
    frame = b'{"action": "synthesize", "text": "Hi.", "speed": ' + speed + b"}"
    assert refusal(TTS, frame) == "invalid_field"


def test_a_batch_item_with_nan_audio_is_refused_alone():
    frame = b'{"action": "batch_transcribe", "batch_data": [{"audio_data": [0.1]}, {"audio_data": [NaN]}]}'
    prepared = prepare_frame(STT, LIMITS, frame)
    assert prepared.error is None
    assert [item.error.code if item.error else None for item in prepared.items] == [None, "invalid_audio"]


def test_a_nan_request_id_is_echoed_as_null():
    message, encoding = protocol.decode_request(b'{"request_id": NaN}')
    reply = protocol.error_reply(BusError("invalid_field", "x"), message["request_id"])
    assert json.loads(protocol.encode_reply(reply, encoding))["request_id"] is None


# --- replies -----------------------------------------------------------------------------------


def standard_reply(reply: dict[str, Any]) -> bytes:
    return json.dumps(protocol._json_safe(reply), separators=(",", ":")).encode()


@dataclasses.dataclass
class Record:
    a: int = 1


REPLIES = [
    {"status": "success", "text": "Grüße, 日本", "language": "en", "truncated": False, "n": None},
    {"x": float("nan"), "y": [float("inf"), -float("inf")], "z": np.float64("nan"), "w": (1, 2.5)},
    {"audio": b"\x00\x01\xff" * 100, "b": bytearray(b"ab")},
    {"f32": np.float32(0.1), "i64": np.int64(-3), "u8": np.uint8(200), "flag": np.bool_(True)},
    {1: "int key", 2.5: "float key", None: "none key", protocol.Encoding.JSON: "enum key"},
    {False: "bool key", (1, "a"): "tuple key"},
    {"request_id": 10**30, "low": -(2**63) - 1, "high": 2**64 - 1},
    {"request_id": "\ud800"},
    {"nested": [{"a": [{"b": [1, 2, {"c": float("nan")}]}]}], "encoding": protocol.Encoding.MSGPACK},
]


@pytest.mark.parametrize("reply", REPLIES, ids=range(len(REPLIES)))
def test_a_reply_means_what_it_meant(reply):
    # repr: NaN, ints and floats and the key order compare exactly.
    body = protocol.encode_reply(reply, protocol.Encoding.JSON)
    assert repr(json.loads(body)) == repr(json.loads(standard_reply(reply)))


@pytest.mark.parametrize("value", [Record(), np.zeros(2), memoryview(b"x"), {1, 2}])
def test_what_the_standard_library_did_not_write_is_still_a_type_error(value):
    with pytest.raises(TypeError):
        standard_reply({"v": value})
    with pytest.raises(TypeError):
        protocol.encode_reply({"v": value}, protocol.Encoding.JSON)
