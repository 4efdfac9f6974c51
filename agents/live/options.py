"""The fields of the live-stream actions, checked: what `stream_open` fixes for the whole
stream (a `StreamOpen` record: sample rate, dtype, stream options; the decode options as
`transcribe` checks them), a chunk's length, and how long `next_event` waits. Each returns
the checked value or raises BusError naming the field."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from agents.live.session import LiveConfig
from model_manager.audio import AUDIO_CODES, AUDIO_MESSAGES, SUPPORTED_DTYPES, AudioFields
from model_manager.engines.whisper.request import DECODE_MESSAGES, DecodeFields
from model_manager.errors import INVALID_AUDIO, BusError
from model_manager.fields import FiniteNumber, Messages, checked

#: The stream options' bounds, inclusive.
SESSION_RANGES: dict[str, tuple[float, float]] = {
    "partial_interval_ms": (100, 10_000),
    "end_silence_ms": (100, 10_000),
    "vad_threshold": (0.05, 0.95),
    "context_ms": (0, 30_000),
}


def _within(key: str) -> Any:
    """An optional finite number within `key`'s bounds."""
    low, high = SESSION_RANGES[key]
    return Annotated[FiniteNumber, Field(ge=low, le=high)] | None


class StreamOpen(AudioFields):
    """What `stream_open` fixes for the whole stream, besides its decode fields
    (`decode_fields`): how its chunks' samples are read (`AudioFields`: the sample rate,
    the dtype, float32 unless set), and its stream options; absent options take the agent's
    settings."""

    dtype: Literal["float32", "int16"] = "float32"
    #: How often the open utterance is re-decoded for a partial.
    partial_interval_ms: _within("partial_interval_ms") = None
    #: How long a pause ends an utterance.
    end_silence_ms: _within("end_silence_ms") = None
    #: Silero VAD's speech probability threshold.
    vad_threshold: _within("vad_threshold") = None
    #: How much of the stream's earlier speech a decode hears.
    context_ms: _within("context_ms") = None


def _range_message(key: str) -> Callable[[Any], str]:
    low, high = SESSION_RANGES[key]
    return lambda value: f"{key} must be a number in [{low}, {high}], got {value!r:.50}"


_OPEN_MESSAGES: Messages = {**AUDIO_MESSAGES, **{key: _range_message(key) for key in SESSION_RANGES}}


def stream_open(message: dict[str, Any]) -> StreamOpen:
    """A `stream_open`'s stream fields, or BusError naming the first bad one."""
    return checked(StreamOpen, message, _OPEN_MESSAGES, AUDIO_CODES)


#: The decoding fields a stream takes (prompts, temperatures and timestamps are not served on
#: live decodes).
STREAM_DECODE_FIELDS = ("language", "task", "beam_size")


def decode_fields(message: dict[str, Any]) -> dict[str, Any]:
    """The fields every decode of the stream carries, checked as `transcribe` checks them."""
    asked = {k: message[k] for k in STREAM_DECODE_FIELDS if k in message}
    fields = checked(DecodeFields, asked, DECODE_MESSAGES).given()
    if message.get("model_pref") is not None:
        fields["model_pref"] = message["model_pref"]
    return fields


def session_config(opened: StreamOpen, base: LiveConfig) -> LiveConfig:
    """The agent's session settings, with the stream's own options over them."""
    values = {key: float(value) for key in SESSION_RANGES if (value := getattr(opened, key)) is not None}
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


class NextEvent(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    #: How long the call may wait for an event, capped by the agent (0: answer at once).
    timeout_ms: Annotated[FiniteNumber, Field(ge=0)] = 1000


def wait_ms(message: dict[str, Any], cap_ms: int) -> int:
    """How long a `next_event` call waits, or BusError for a bad `timeout_ms`."""
    asked = checked(NextEvent, message, {
        "timeout_ms": lambda value: f"timeout_ms must be a number >= 0, got {value!r:.50}"})
    return int(min(asked.timeout_ms, cap_ms))
