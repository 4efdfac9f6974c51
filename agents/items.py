"""One typed record per kind of client item, checked once, at intake.

A `TranscribeItem` is what the STT agent's items hold (a `transcribe`, a `queue_for_batch`
or a `stream`, or one item of a `batch_transcribe`), a `SynthesizeItem` what the TTS agent's
hold; docs/protocol.md §3 and §4 describe their fields. Each record is the shared options
(agents/options.py) followed by the service's own fields, and the first bad field in that
order is the error: a `BusError` that names it (`model_manager.fields.checked`).

The field types are the engines' own (the Whisper family's `DecodeFields`; the strict types
of model_manager/fields.py that Kokoro's `SpeechFields` is made of), so that the agent and the
engine share one rule per field: the agent refuses a bad item before its audio travels, and
the engine still refuses what reaches it by another path.

What needs more than a field's value is checked after the record, in agents/services.py: the
audio (decoded by `decode_audio`, its errors invalid_audio), the text's length limit
(text_too_long), and where an `output_path` may write.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator

from agents.options import OPTION_MESSAGES, RequestOptions
from model_manager.engines.whisper.request import DECODE_MESSAGES, DecodeFields
from model_manager.fields import FiniteNumber, Messages, NonBlankStr, Utf8Str, checked, string_message

AudioFormat = Literal["wav", "pcm"]
AUDIO_FORMATS: tuple[str, ...] = get_args(AudioFormat)


def _file_name(value: str) -> str:
    # A NUL would end the path early in the system call that opens it.
    if not value or "\x00" in value:
        raise ValueError("not a file name")
    return value


class TranscribeItem(DecodeFields, RequestOptions):
    """An STT item: the shared options, then how to decode its audio (`DecodeFields`). Its
    audio fields, `audio_data` (a list of numbers, or bytes), `sample_rate` and `dtype`, are
    `decode_audio`'s: they are decoded once the record holds."""


class SynthesizeItem(RequestOptions):
    """A TTS item: the shared options, then what to say and how."""

    #: What to say: something besides whitespace; pause markers such as [pause:0.5] insert
    #: silence. At most limits.max_text_chars characters (checked after the record).
    text: NonBlankStr
    #: A pack name or a weighted mix ("jf_alpha(2)+jm_kumo(1)"); absent: the engine's default.
    #: Which voices exist is the engine's to say.
    voice: Utf8Str | None = None
    #: Speaking rate; absent: 1.0. Its range is the engine's ([0.25, 4] for Kokoro).
    speed: FiniteNumber | None = None
    #: "wav" (a 16-bit PCM WAV file) or "pcm" (raw little-endian float32 samples).
    format: AudioFormat = "wav"
    #: Write the WAV file there, under limits.output_dir, instead of replying with the audio.
    output_path: Annotated[Utf8Str, AfterValidator(_file_name)] | None = None


TRANSCRIBE_MESSAGES: Messages = {**OPTION_MESSAGES, **DECODE_MESSAGES}
SYNTHESIZE_MESSAGES: Messages = {
    **OPTION_MESSAGES,
    "text": lambda value: "text must be a non-empty string",
    "voice": string_message("voice"),
    "speed": lambda value: f"speed must be a finite number, got {value!r:.50}",
    "format": lambda value: f"format must be one of {list(AUDIO_FORMATS)}, got {value!r:.50}",
    "output_path": lambda value: "output_path must be a non-empty string",
}


def transcribe_item(fields: dict[str, Any]) -> TranscribeItem:
    """A client's STT item as its record, or BusError naming its first bad field."""
    return checked(TranscribeItem, fields, TRANSCRIBE_MESSAGES)


def synthesize_item(fields: dict[str, Any]) -> SynthesizeItem:
    """A client's TTS item as its record, or BusError naming its first bad field."""
    return checked(SynthesizeItem, fields, SYNTHESIZE_MESSAGES)
