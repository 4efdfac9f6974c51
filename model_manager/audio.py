"""Turning client audio into what Whisper wants: mono float32 at 16 kHz, checked.

Clients send `audio_data` as a list of numbers (JSON or msgpack) or as raw bytes (msgpack
only) with a `dtype` of "float32" (samples in [-1, 1]) or "int16" (PCM). Every problem is a
`BusError` with a precise message; nothing is clipped, guessed or silently fixed.
"""

from __future__ import annotations

from math import gcd
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from model_manager.errors import AUDIO_TOO_LONG, INVALID_AUDIO, MISSING_FIELD, BusError
from model_manager.fields import Messages, checked

WHISPER_SAMPLE_RATE = 16_000
SUPPORTED_DTYPES = {"float32": np.float32, "int16": np.int16}
MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 384_000
# float32 samples are nominally in [-1, 1]; allow a little overshoot from resampling filters.
FLOAT_HEADROOM = 1.5


class AudioFields(BaseModel):
    """How a client's samples are to be read (`audio_data` itself is checked by
    `decode_audio`, sample by sample, where a record would cost too much)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    #: The rate the audio was recorded at; anything but 16 kHz is resampled.
    sample_rate: Annotated[StrictInt, Field(ge=MIN_SAMPLE_RATE, le=MAX_SAMPLE_RATE)] = WHISPER_SAMPLE_RATE
    #: How raw bytes hold the samples: required with bytes; a list of numbers is read as it is
    #: ("int16": PCM integers, else floats in [-1, 1]).
    dtype: Literal["float32", "int16"] | None = None


AUDIO_MESSAGES: Messages = {
    "sample_rate": lambda value: (f"sample_rate must be an integer in [{MIN_SAMPLE_RATE}, "
                                  f"{MAX_SAMPLE_RATE}], got {value!r:.50}"),
    "dtype": lambda value: f"dtype must be one of {sorted(SUPPORTED_DTYPES)}, got {value!r:.50}",
}
#: Bad audio fields are invalid_audio, as bad samples are.
AUDIO_CODES = {"sample_rate": INVALID_AUDIO, "dtype": INVALID_AUDIO}


def audio_fields(fields: dict[str, Any]) -> AudioFields:
    """The sample rate and dtype of `fields`, checked (BusError invalid_audio naming the field)."""
    # Only these two go to the record: `audio_data` may hold a million samples.
    return checked(AudioFields, {k: fields[k] for k in ("sample_rate", "dtype") if k in fields},
                   AUDIO_MESSAGES, AUDIO_CODES)


def decode_audio(fields: dict[str, Any], max_seconds: float) -> np.ndarray:
    """Validate `audio_data`/`sample_rate`/`dtype` and return float32 mono 16 kHz samples."""
    if "audio_data" not in fields or fields["audio_data"] is None:
        raise BusError(MISSING_FIELD, "audio_data is required")
    how = audio_fields(fields)
    rate = how.sample_rate
    samples = _to_array(fields["audio_data"], how.dtype)
    if samples.size == 0:
        raise BusError(INVALID_AUDIO, "audio_data is empty")
    seconds = samples.size / rate
    if seconds > max_seconds:
        raise BusError(AUDIO_TOO_LONG, f"audio is {seconds:.1f} s long; the limit is {max_seconds:g} s")
    if not np.isfinite(samples).all():
        raise BusError(INVALID_AUDIO, "audio_data contains NaN or infinite samples")
    peak = float(np.abs(samples).max())
    if peak > FLOAT_HEADROOM:
        raise BusError(
            INVALID_AUDIO,
            f"float samples must lie in [-1, 1] (peak {peak:g}); send integer PCM with dtype 'int16'",
        )
    return resample(samples, rate, WHISPER_SAMPLE_RATE)


def _to_array(data: Any, dtype: str | None) -> np.ndarray:
    if isinstance(data, (bytes, bytearray, memoryview)):
        if dtype is None:
            raise BusError(MISSING_FIELD, "dtype ('float32' or 'int16') is required with raw audio bytes")
        np_dtype = np.dtype(SUPPORTED_DTYPES[dtype]).newbyteorder("<")
        if len(data) % np_dtype.itemsize:
            raise BusError(INVALID_AUDIO, f"{len(data)} bytes is not a whole number of {dtype} samples")
        raw = np.frombuffer(data, dtype=np_dtype)
    elif isinstance(data, list):
        if not _all_numbers(data):
            raise BusError(INVALID_AUDIO, "audio_data must be a flat list of numbers (mono)")
        try:
            raw = np.asarray(data, dtype=np.float64)
        except OverflowError:  # JSON integers are unbounded
            raise BusError(INVALID_AUDIO, "audio_data holds a number too large for a sample") from None
        if dtype == "int16" and raw.size and (np.abs(raw[np.isfinite(raw)]).max(initial=0) > 32768):
            raise BusError(INVALID_AUDIO, "int16 samples must lie in [-32768, 32767]")
    else:
        kind = type(data).__name__
        raise BusError(INVALID_AUDIO, f"audio_data must be a list of numbers or bytes, got {kind}")
    if dtype == "int16":
        return (raw.astype(np.float32) / 32768.0).astype(np.float32)
    return raw.astype(np.float32)


def _all_numbers(data: list[Any]) -> bool:
    """Every item an int or a float, never a bool (which numpy would read as 0 or 1)."""
    # The exact types first: a set of types is built at C speed, 7x faster than an
    # isinstance per sample, which only the rare list with subclasses (numpy scalars) needs.
    if _PLAIN_NUMBERS.issuperset(map(type, data)):
        return True
    return all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in data)


_PLAIN_NUMBERS = frozenset({int, float})


def load_resampler() -> None:
    """Import what `resample` needs. scipy.signal takes 1-3 s to import on a loaded machine:
    agents call this on a background thread at start, so that neither their start-up nor
    the first resampled request on their socket thread (where it would outlast the model
    manager's liveness window) pays it."""
    from scipy.signal import resample_poly  # noqa: F401


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    if from_rate == to_rate:
        return np.ascontiguousarray(samples, dtype=np.float32)
    from scipy.signal import resample_poly  # loaded at agent start by load_resampler

    g = gcd(from_rate, to_rate)
    return resample_poly(samples, to_rate // g, from_rate // g).astype(np.float32)
