"""A Realtime `session.update`'s `session` as typed records, and a record's first refusal as
the `error` event's fields.

The records are the GA shape the gateway serves (`audio.input`: `format`, `transcription`,
`turn_detection`); a beta `transcription_session.update` is mapped to it first
(realtime_events.from_beta_shape). They are strict where a client's mistake would otherwise
pass quietly: a bool is not a number, a float is not an integer, nothing is read out of a
string, and an object is an object. Fields the gateway does not use (`noise_reduction`,
`include`, turn detection's `prefix_padding_ms`, ...) are ignored, as OpenAI's own server
ignores what does not apply to transcription.

`refusal_of` turns the record's first error (in the records' field order) into the code,
message and `param` of the Realtime `error` event: `param` is the field's path in the
session ("session.audio.input.format.rate"), read off pydantic's error `loc`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, model_validator

from agents.live.options import SESSION_RANGES
from model_manager.fields import FiniteNumber, Utf8Str, string_message

#: The rates a client's raw audio may have (OpenAI's audio/pcm is 24 kHz; G.711 is 8 kHz).
MIN_RATE, MAX_RATE = 8000, 48000
#: G.711's rate, fixed by the format.
G711_RATE = 8000
DEFAULT_PCM_RATE = 24000

INVALID_VALUE, UNSUPPORTED_VALUE = "invalid_value", "unsupported_value"
#: Turn detection's bounds are the live stream's own (it becomes the stream's end_silence_ms
#: and vad_threshold), so that the two can never disagree.
SILENCE_MS = SESSION_RANGES["end_silence_ms"]
THRESHOLD = SESSION_RANGES["vad_threshold"]


class _Record(BaseModel):
    # Frozen: a checked session is read, never patched. Unknown fields are ignored (see above).
    model_config = ConfigDict(frozen=True, extra="ignore")


class AudioFormat(_Record):
    """`audio.input.format`: how the client's audio bytes are encoded."""

    #: audio/pcm (16-bit little-endian mono), or G.711 audio/pcmu (mu-law) or audio/pcma (A-law).
    type: Literal["audio/pcm", "audio/pcmu", "audio/pcma"] = "audio/pcm"
    #: audio/pcm's sample rate in Hz, an integer in MIN_RATE..MAX_RATE; G.711's is G711_RATE.
    rate: Annotated[StrictInt, Field(ge=MIN_RATE, le=MAX_RATE)] = DEFAULT_PCM_RATE

    @model_validator(mode="before")
    @classmethod
    def _g711_rate_is_fixed(cls, data: Any) -> Any:
        # G.711's rate comes with the format: a `rate` sent beside it is not read, let alone refused.
        if isinstance(data, dict) and data.get("type") in ("audio/pcmu", "audio/pcma"):
            return {**data, "rate": G711_RATE}
        return data


class Transcription(_Record):
    """`audio.input.transcription`: how each utterance is transcribed."""

    #: The model as the client names it ("whisper-1", "gpt-4o-transcribe"); the gateway maps
    #: it to a bus model. Absent, null or "": the session's model stays.
    model: Utf8Str | None = None
    #: An ISO-639-1 language code; null or "": detected per utterance.
    language: Utf8Str | None = None
    #: Only "" or null: live decodes take no prompt, so that they batch together.
    prompt: Literal[""] | None = None


class TurnDetection(_Record):
    """`audio.input.turn_detection` when not null: the bus finds the utterances (server VAD).
    Absent numbers keep the session's values."""

    type: Literal["server_vad"] = "server_vad"  # semantic_vad is not served
    #: How long a silence ends an utterance, in ms: an integer in SILENCE_MS (100..10000).
    silence_duration_ms: Annotated[StrictInt, Field(ge=SILENCE_MS[0], le=SILENCE_MS[1])] | None = None
    #: How sure the voice detector must be that a frame is speech: a number in THRESHOLD
    #: (0.05..0.95).
    threshold: Annotated[FiniteNumber, Field(ge=THRESHOLD[0], le=THRESHOLD[1])] | None = None


class AudioInput(_Record):
    """`audio.input`. Which fields the client sent matters: an update changes those only
    (see `model_fields_set`)."""

    #: Not null: there is no "no format".
    format: AudioFormat = Field(default_factory=AudioFormat)
    #: Null is the same as absent.
    transcription: Transcription | None = None
    #: Null: no turn detection, each `input_audio_buffer.commit` is one item, transcribed whole.
    turn_detection: TurnDetection | None = None


class Audio(_Record):
    """`audio`; the session's `audio.output` does not apply to transcription."""

    input: AudioInput | None = None


class Session(_Record):
    """A `session.update`'s `session` in the GA shape. Its `type` is not read: the gateway
    serves transcription sessions whatever the client calls them."""

    audio: Audio | None = None

    def audio_input(self) -> AudioInput:
        """The `audio.input` sent, or an empty one (which changes nothing)."""
        if self.audio is None or self.audio.input is None:
            return AudioInput()
        return self.audio.input


class Refusal(NamedTuple):
    """A field's error event: its code and its message, made from the value sent."""

    code: str
    message: Callable[[Any], str]
    #: The path to name instead of the field's own, where the error is about the object around it.
    param: str | None = None


def _object(name: str) -> Refusal:
    return Refusal(INVALID_VALUE, lambda value: f"{name} must be an object")


_NOT_SERVER_VAD = Refusal(UNSUPPORTED_VALUE, lambda value: "turn_detection must be server_vad or null")

#: Each field's refusal, by its path: the `param` of its error event.
REFUSALS: dict[str, Refusal] = {
    "session": _object("session"),
    "session.audio": _object("audio"),
    "session.audio.input": _object("input"),
    "session.audio.input.format": _object("format"),
    "session.audio.input.format.type": Refusal(
        UNSUPPORTED_VALUE, lambda value: f"audio format {value!r:.40} is not supported: "
                                         "use audio/pcm, audio/pcmu or audio/pcma"),
    "session.audio.input.format.rate": Refusal(
        INVALID_VALUE, lambda value: f"rate must be an integer in {MIN_RATE}..{MAX_RATE}, got {value!r:.40}"),
    "session.audio.input.transcription": _object("transcription"),
    "session.audio.input.transcription.model": Refusal(INVALID_VALUE, string_message("model")),
    "session.audio.input.transcription.language": Refusal(INVALID_VALUE, string_message("language")),
    "session.audio.input.transcription.prompt": Refusal(
        UNSUPPORTED_VALUE, lambda value: "a transcription prompt is not supported on live streams "
                                         "(their decodes batch together without one)"),
    "session.audio.input.turn_detection": _NOT_SERVER_VAD,
    # A type other than server_vad is a turn detection not served: the error names it whole.
    "session.audio.input.turn_detection.type": _NOT_SERVER_VAD._replace(
        param="session.audio.input.turn_detection"),
    "session.audio.input.turn_detection.silence_duration_ms": Refusal(
        INVALID_VALUE,
        lambda value: f"silence_duration_ms must be an integer in {SILENCE_MS[0]}..{SILENCE_MS[1]}"),
    "session.audio.input.turn_detection.threshold": Refusal(
        INVALID_VALUE, lambda value: f"threshold must be a number in {THRESHOLD[0]}..{THRESHOLD[1]}"),
}


def refusal_of(error: ValidationError, session: dict[str, Any]) -> tuple[str, str, str]:
    """The code, message and param of `error`'s first refusal of `session` (a GA session)."""
    loc = ("session", *error.errors(include_url=False)[0]["loc"])
    # The longest path with a refusal: a union's error adds the member's name after the
    # field's path, and "session" itself always has one.
    for end in range(len(loc), 0, -1):
        path = ".".join(str(key) for key in loc[:end])
        if path in REFUSALS:
            break
    code, message, param = REFUSALS[path]
    return code, message(_sent(session, loc[1:end])), param or path


def _sent(session: dict[str, Any], path: tuple[int | str, ...]) -> Any:
    """The value at `path` in the session as sent (None where it is absent)."""
    value: Any = session
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value
