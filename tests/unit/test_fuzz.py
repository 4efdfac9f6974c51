"""Fuzzing: whatever a client sends, the answer is a valid request or a BusError, never a crash.

Property tests (hypothesis) cover frame decoding and request validation in both encodings;
one socket-level test throws a few hundred random frames at the running agents.
"""

from __future__ import annotations

import json
import random
import string

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.options import check_options, echoable
from agents.services import parse_stt_item, parse_tts_item
from model_manager import errors, protocol
from model_manager.audio import decode_audio
from model_manager.config import Limits
from model_manager.errors import BusError

LIMITS = Limits(max_audio_seconds=2.0, max_text_chars=200)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KNOWN_CODES = {v for k, v in vars(errors).items() if k.isupper() and isinstance(v, str)}

# --- strategies ---------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)


def containers(inner: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)


# JSON integers are unbounded, and "\ud800" escapes make lone surrogates that UTF-8 cannot carry.
json_values = st.recursive(
    scalars | st.integers() | st.sampled_from(["\ud800", "ok\udcff"]), containers, max_leaves=20
)
msgpack_values = st.recursive(scalars | st.binary(max_size=64), containers, max_leaves=20)
audio_lists = st.lists(
    st.floats(-2, 2) | st.integers(-40000, 40000) | st.integers(-(2**63), 2**63), max_size=64
)
audio_bytes = st.binary(max_size=256) | st.lists(st.floats(-1, 1, width=32), max_size=64).map(
    lambda xs: np.asarray(xs, "<f4").tobytes()
)


def item_fields(values: st.SearchStrategy, for_msgpack: bool = True) -> st.SearchStrategy:
    """Maps biased toward the fields the agents read, with good and bad values mixed, as the
    encoding can carry them: raw bytes and 64-bit integers in msgpack, big integers in JSON."""
    ints = st.integers(-(2**63), 2**64 - 1) if for_msgpack else st.integers()
    audio = audio_lists | audio_bytes if for_msgpack else audio_lists
    return st.fixed_dictionaries(
        {},
        optional={
            "audio_data": audio | values,
            "sample_rate": st.sampled_from([8000, 16000, 44100, 0, 999, 10**9]) | values,
            "dtype": st.sampled_from(["float32", "int16", "int64"]) | values,
            "language": st.sampled_from(["en", "de"]) | values,
            "task": st.sampled_from(["transcribe", "translate"]) | values,
            "beam_size": st.integers(-2, 12) | values,
            "text": st.text(max_size=40) | st.just("x" * 201) | values,
            "voice": st.sampled_from(["jf_alpha", "jf_alpha(2)+jm_kumo(1)"]) | values,
            "speed": st.floats() | ints | values,
            "format": st.sampled_from(["wav", "pcm", "mp3"]) | values,
            "output_path": st.sampled_from(["a.wav", "../../etc/passwd", "/abs.wav", "", "a\x00b"]) | values,
            "request_id": values,
            "timeout_ms": st.floats() | ints | values,
            "priority": st.sampled_from(["interactive", "bulk", "urgent"]) | values,
            "model_pref": st.sampled_from(["fast", "quality"]) | values,
        },
    )


def encode(fields: dict, encoding: str) -> bytes:
    if encoding == "json":
        return json.dumps(fields, allow_nan=True).encode()
    return msgpack.packb(fields, use_bin_type=True)


def validate(frame: bytes, parse: object) -> None:
    """What the agent does with one frame before it reaches a model: decode, check the shared
    options, parse the item, and answer an error in the request's encoding."""
    encoding = protocol.Encoding.MSGPACK
    request_id = None
    try:
        message, encoding = protocol.decode_request(frame)
        request_id = echoable(message.get("request_id"))
        check_options(message)
        request = parse(message, LIMITS)  # type: ignore[operator]
    except BusError as exc:
        assert exc.code in KNOWN_CODES and exc.message
        protocol.encode_reply(protocol.error_reply(exc, request_id), encoding)
        return
    # A valid request must cross the internal wire to the model manager.
    assert protocol.unpack(protocol.pack({"request": request}))["request"].keys() == request.keys()


# --- properties ---------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=512) | st.binary(max_size=256).map(lambda b: b"{" + b) | st.just(b"[" * 100_000))
def test_decode_request_of_any_bytes_is_a_map_or_bad_request(frame):
    try:
        message, encoding = protocol.decode_request(frame)
    except BusError as exc:
        assert exc.code == "bad_request"
    else:
        assert isinstance(message, dict) and encoding in protocol.Encoding


@FUZZ
@given(json_values.map(lambda v: json.dumps(v).encode()) | msgpack_values.map(msgpack.packb))
def test_decode_request_of_any_encoded_value(frame):
    try:
        message, _ = protocol.decode_request(frame)
    except BusError as exc:
        assert exc.code == "bad_request"
    else:
        assert isinstance(message, dict)


def test_deeply_nested_json_is_bad_request():
    with pytest.raises(BusError) as info:
        protocol.decode_request(b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    assert info.value.code == "bad_request"


@pytest.mark.parametrize("parse", [parse_stt_item, parse_tts_item], ids=["stt", "tts"])
@FUZZ
@given(data=st.data())
def test_any_json_request_is_valid_or_a_bus_error(parse, data):
    validate(encode(data.draw(item_fields(json_values, for_msgpack=False)), "json"), parse)


@pytest.mark.parametrize("parse", [parse_stt_item, parse_tts_item], ids=["stt", "tts"])
@FUZZ
@given(data=st.data())
def test_any_msgpack_request_is_valid_or_a_bus_error(parse, data):
    validate(encode(data.draw(item_fields(msgpack_values)), "msgpack"), parse)


@FUZZ
@given(item_fields(json_values, for_msgpack=False) | item_fields(msgpack_values))
def test_decode_audio_gives_16k_float32_mono_or_a_bus_error(fields):
    try:
        audio = decode_audio(fields, LIMITS.max_audio_seconds)
    except BusError as exc:
        assert exc.code in {"missing_field", "invalid_audio", "audio_too_long"}
    else:
        assert audio.dtype == np.float32 and audio.ndim == 1 and audio.size > 0
        assert np.isfinite(audio).all()


# What these properties found, kept as plain examples.
FOUND = [
    (parse_stt_item, {"audio_data": [10**400]}, "invalid_audio"),  # OverflowError in numpy
    (parse_stt_item, {"audio_data": [0.1], "dtype": ["float32"]}, "invalid_audio"),  # unhashable
    (parse_stt_item, {"audio_data": [0.1], "beam_size": 2**70}, "invalid_field"),  # beyond msgpack
    (parse_stt_item, {"audio_data": [0.1], "language": "\ud800"}, "invalid_field"),  # not UTF-8
    (parse_tts_item, {"text": "Hi.", "speed": 10**400}, "invalid_field"),  # OverflowError in isfinite
    (parse_tts_item, {"text": "Hi \udcff"}, "invalid_field"),
    (parse_tts_item, {"text": "Hi.", "voice": ["jf_alpha"]}, "invalid_field"),
    (parse_tts_item, {"text": "Hi.", "priority": ["bulk"]}, "invalid_field"),  # unhashable
    (parse_tts_item, {"text": "Hi.", "timeout_ms": float("inf")}, "invalid_field"),  # int(inf)
    (parse_tts_item, {"text": "Hi.", "request_id": {"a": 1}}, "invalid_field"),
]


@pytest.mark.parametrize(("parse", "fields", "code"), FOUND)
def test_what_fuzzing_found_is_a_clear_error(parse, fields, code):
    with pytest.raises(BusError) as info:
        check_options(fields)
        parse(fields, LIMITS)
    assert info.value.code == code


# --- the running agents -------------------------------------------------------------------

# Seeds to mutate: requests that cost no inference, so the fuzz stays cheap whatever it hits.
SEEDS = [
    {"action": "health"},
    {"action": "get_result", "request_id": "nope"},
    {"action": "next_chunk", "request_id": "nope"},
    {"action": "transcribe", "audio_data": [], "request_id": 1},
    {"action": "synthesize", "speed": 2},
]


def random_frames(rng: random.Random, count: int) -> list[list[bytes]]:
    """Multipart messages as a DEALER sends them: [b"", body] like REQ, or anything else."""
    frames: list[list[bytes]] = []
    for i in range(count):
        kind = i % 5
        if kind == 0:
            body = rng.randbytes(rng.randint(1, 2048))
        elif kind == 1:
            body = b"{" + "".join(rng.choices(string.printable, k=rng.randint(0, 200))).encode()
        elif kind == 2:
            seed = rng.choice(SEEDS)
            raw = bytearray(json.dumps(seed).encode() if rng.random() < 0.5 else msgpack.packb(seed))
            for _ in range(rng.randint(1, 4)):
                raw[rng.randrange(len(raw))] = rng.randrange(256)
            body = bytes(raw)
        elif kind == 3:
            body = msgpack.packb(
                {"action": rng.choice(["transcribe", "synthesize", "queue_for_batch", 7])}
                | {
                    rng.choice(["audio_data", "text", "speed", "request_id", "batch_data"]): rng.choice(
                        [None, -1, 1e308, "", [None], {"a": []}, b"\xff" * 3]
                    )
                }
            )
        else:  # the wrong number of frames
            frames.append([b"", *(rng.randbytes(rng.randint(0, 16)) for _ in range(rng.randint(2, 5)))])
            continue
        frames.append([b"", body] if rng.random() < 0.9 else [body])
    return frames
