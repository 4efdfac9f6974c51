"""The fields of the live-stream actions, checked: what `stream_open` fixes for the whole
stream (sample rate, dtype, decode options, stream options), a chunk's length, and how long
`next_event` waits. Each function returns the checked value or raises BusError."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from agents.live.session import LiveConfig
from agents.live.vad import SAMPLE_RATE
from agents.services import parse_stt_item
from model_manager.audio import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, SUPPORTED_DTYPES
from model_manager.config import Limits
from model_manager.errors import INVALID_AUDIO, INVALID_FIELD, BusError


def sample_rate(message: dict[str, Any]) -> int:
    rate = message.get("sample_rate", SAMPLE_RATE)
    if isinstance(rate, bool) or not isinstance(rate, int) or not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        bounds = f"[{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}]"
        raise BusError(INVALID_AUDIO, f"sample_rate must be an integer in {bounds}, got {rate!r:.50}")
    return rate


def dtype(message: dict[str, Any]) -> str:
    name = message.get("dtype", "float32")
    if not isinstance(name, str) or name not in SUPPORTED_DTYPES:
        raise BusError(INVALID_AUDIO, f"dtype must be one of {sorted(SUPPORTED_DTYPES)}, got {name!r:.50}")
    return name


def decode_fields(message: dict[str, Any]) -> dict[str, Any]:
    """The fields every decode of the stream carries, checked as `transcribe` checks them."""
    options = {k: message[k] for k in ("language", "task", "beam_size") if message.get(k) is not None}
    request = parse_stt_item({**options, "audio_data": [0.0]}, Limits())
    fields = {k: v for k, v in request.items() if k != "audio"}
    if message.get("model_pref") is not None:
        fields["model_pref"] = message["model_pref"]
    return fields


#: Stream options: (wire field, lowest, highest).
_OPTIONS = {
    "partial_interval_ms": (100, 10_000),
    "end_silence_ms": (100, 10_000),
    "vad_threshold": (0.05, 0.95),
    "context_ms": (0, 30_000),
}


def session_config(message: dict[str, Any], base: LiveConfig) -> LiveConfig:
    values: dict[str, float] = {}
    for key, (low, high) in _OPTIONS.items():
        value = message.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise BusError(INVALID_FIELD, f"{key} must be a number in [{low}, {high}], got {value!r:.50}")
        values[key] = float(value)
    if not values:
        return base
    endpoint = base.endpoint
    if "end_silence_ms" in values or "vad_threshold" in values:
        threshold = values.get("vad_threshold", endpoint.threshold)
        endpoint = replace(
            endpoint,
            min_silence_s=values.get("end_silence_ms", endpoint.min_silence_s * 1000) / 1000,
            threshold=threshold,
            neg_threshold=None if endpoint.neg_threshold is None else min(endpoint.neg_threshold, threshold),
        )
    interval = values.get("partial_interval_ms", base.decode_interval_s * 1000) / 1000
    context_s = values.get("context_ms", base.context_s * 1000) / 1000
    return replace(base, endpoint=endpoint, decode_interval_s=interval, context_s=context_s,
                   min_partial_audio_s=min(base.min_partial_audio_s, interval))


def chunk_seconds(data: Any, rate: int, dtype_name: str) -> float:
    """The chunk's length, counted cheaply (it is decoded and checked on the worker)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        samples = len(data) / np.dtype(SUPPORTED_DTYPES[dtype_name]).itemsize
    elif isinstance(data, list):
        samples = len(data)
    else:
        kind = type(data).__name__
        raise BusError(INVALID_AUDIO, f"audio_data must be a list of numbers or bytes, got {kind}")
    return samples / rate


def wait_ms(message: dict[str, Any], cap_ms: int) -> int:
    value = message.get("timeout_ms", 1000)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise BusError(INVALID_FIELD, f"timeout_ms must be a number >= 0, got {value!r:.50}")
    return int(min(value, cap_ms))
