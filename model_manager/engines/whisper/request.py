"""The Whisper family's typed request, and the one place a request's fields are checked.

`DecodeFields` is the record of a client's decoding fields (language, task, beam_size, vad,
prompt, temperature, timestamps): their types and ranges, one rule each. The STT agent checks
a client's item with it at intake (agents/items.py), and `prepare_request` checks the fields
again with it, for those that reach the engine by other paths, before the rules that depend on
the model. `prepare_request` turns a client's fields into an `SttRequest`: audio validated,
trimmed to its speech (unless `vad` is off), and given its lead-in of silence, encoder window
and token bound by the model's `WindowPolicy`. Everything after it (batch key, cost,
run_batch) reads the dataclass.

Light on purpose: the agents import `DecodeFields` from here, so nothing at module level
pulls in faster-whisper, CTranslate2 or torch.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from model_manager.engines.whisper.window_policy import FULL_WINDOW_S, MAX_TARGET_POSITIONS, WindowPolicy
from model_manager.errors import AUDIO_TOO_LONG, INVALID_AUDIO, INVALID_FIELD, MISSING_FIELD, BusError
from model_manager.fields import FiniteNumber, Messages, Utf8Str, checked, string_message

SAMPLE_RATE = 16000
#: The engine's own cap on one request; the agents refuse beyond limits.max_audio_seconds first.
MAX_AUDIO_SECONDS = 3600.0
Task = Literal["transcribe", "translate"]
TASKS: tuple[str, ...] = get_args(Task)
MIN_BEAM_SIZE = 1
MAX_BEAM_SIZE = 10
#: Values of the `timestamps` field (see timestamps.py).
Granularity = Literal["segment", "word"]
GRANULARITIES: tuple[str, ...] = get_args(Granularity)
#: Prompt tokens kept (the last ones), as faster-whisper keeps them: half the decoder context.
MAX_PROMPT_TOKENS = MAX_TARGET_POSITIONS // 2 - 1
MAX_PROMPT_CHARS = 10_000


class DecodeFields(BaseModel):
    """How a client asks for its audio to be decoded (docs/protocol.md §3): every field
    optional, absent or null meaning its default. Only what holds for any Whisper model is
    checked here; which languages a model knows, whether it can translate and whether it can
    decode prompts is `prepare_request`'s business."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    #: The spoken language's code ("de", any case; blank means absent), or absent: detect it.
    #: English-only models take "en" or nothing.
    language: Utf8Str | None = None
    #: "transcribe" (the default), or "translate" into English.
    task: Task | None = None
    #: Beams of the beam search; 1, the default, is greedy decoding.
    beam_size: Annotated[StrictInt, Field(ge=MIN_BEAM_SIZE, le=MAX_BEAM_SIZE)] | None = None
    #: Trim the silence around the speech first; absent: the model's own `vad` option.
    vad: StrictBool | None = None
    #: Text that came before the audio (names, spellings, style); see `check_details`.
    prompt: Annotated[Utf8Str, Field(max_length=MAX_PROMPT_CHARS)] | None = None
    #: The first decoding temperature, with fallback to higher ones (timestamps.py); absent:
    #: one decoding, without fallback.
    temperature: Annotated[FiniteNumber, Field(ge=0.0, le=1.0)] | None = None
    #: "segment" or "word": the reply gets segments (and words) with their times.
    timestamps: Granularity | None = None

    def given(self) -> dict[str, Any]:
        """The fields the client set, as checked: what the agent sends on to the engine."""
        return {key: value for key in DECODE_FIELDS if (value := getattr(self, key)) is not None}


#: The names of the decoding fields (`DecodeFields.model_fields` is slow to read per request).
DECODE_FIELDS: tuple[str, ...] = tuple(DecodeFields.model_fields)

#: The invalid_field message of each decoding field, from the value the client sent.
DECODE_MESSAGES: Messages = {
    "language": string_message("language"),
    "task": lambda value: f"task must be one of {', '.join(TASKS)}, got {value!r:.50}",
    "beam_size": lambda value: f"beam_size must be an integer in {MIN_BEAM_SIZE}..{MAX_BEAM_SIZE}, "
                               f"got {value!r:.50}",
    "vad": lambda value: f"vad must be true or false, got {value!r:.50}",
    "prompt": lambda value: f"prompt must be a string of at most {MAX_PROMPT_CHARS} characters",
    "temperature": lambda value: f"temperature must be a number in [0, 1], got {value!r:.50}",
    "timestamps": lambda value: f"timestamps must be one of {list(GRANULARITIES)}, got {value!r:.50}",
}


def decode_fields(fields: Mapping[str, Any]) -> DecodeFields:
    """A client's decoding fields, checked, or BusError(invalid_field) naming the first bad one."""
    return checked(DecodeFields, fields, DECODE_MESSAGES)


@dataclass(frozen=True)
class Details:
    """The decoding details a prepared request asks for (see `check_details` and timestamps.py):
    its prompt's token ids, its first temperature, and "segment" or "word" timestamps."""

    prompt_ids: tuple[int, ...] = ()
    temperature: float | None = None
    timestamps: str | None = None

    @property
    def requested(self) -> bool:
        return bool(self.prompt_ids) or self.temperature is not None or self.timestamps is not None

    def batch_key(self) -> Hashable:
        """What must be equal within one generate call: the prompt's length (see the module
        docstring of timestamps.py), the temperature and whether timestamp tokens are decoded."""
        return (len(self.prompt_ids), self.temperature, self.timestamps)


@dataclass(frozen=True, eq=False)
class SttRequest:
    """One transcription, validated and planned.

    audio: float32 16 kHz, only the speech when `vad` is on (empty when there is none), after
    the policy's lead-in of silence.
    language: a code, or None to detect it (multilingual models only). task: "transcribe" or
    "translate". beam_size: 1 is greedy. window_s: the encoder window of each of its windows
    (0 when there is no speech to run). max_tokens: text tokens one window may decode (None:
    Whisper's own limit). repetition_penalty: 1.0 is none. received_s: the audio as sent.
    """

    audio: np.ndarray
    language: str | None
    task: str
    beam_size: int
    vad: bool
    window_s: float
    max_tokens: int | None
    repetition_penalty: float
    received_s: float
    #: prompt, temperature and timestamps (timestamps.py); a request that asks for any keeps
    #: 30 s windows and Whisper's own token limit, as that path was measured with them.
    details: Details = Details()

    @property
    def has_speech(self) -> bool:
        return self.window_s > 0

    @property
    def windows(self) -> int:
        """How many encoder windows it needs: one, or several for audio over 30 s."""
        return max(1, -(-len(self.audio) // int(FULL_WINDOW_S * SAMPLE_RATE))) if self.has_speech else 0


def validate_language(language: str | None, multilingual: bool, known: Mapping[str, int] | Sequence[str],
                      model_name: str) -> str | None:
    """Normalised language of a request (its type checked by `DecodeFields`), or
    BusError(INVALID_FIELD).

    English-only models accept None or "en" and return "en". Multilingual models accept a code
    in `known` (case-insensitive) or None, meaning: detect it.
    """
    code = language.strip().lower() if language is not None else None
    if code == "":
        code = None
    if not multilingual:
        if code not in (None, "en"):
            raise BusError(INVALID_FIELD, f"model {model_name} is English-only; language {language!r} "
                                          "is not supported (use 'en' or null)")
        return "en"
    if code is not None and code not in known:
        raise BusError(INVALID_FIELD, f"unknown language {language!r} for model {model_name}")
    return code


def validate_audio(audio: object) -> np.ndarray:
    """A 1-D, finite, non-empty float32 array of at most MAX_AUDIO_SECONDS at 16 kHz, or BusError."""
    if audio is None:
        raise BusError(MISSING_FIELD, "audio is required")
    arr = np.asarray(audio)
    if not np.issubdtype(arr.dtype, np.floating):
        # Integer PCM would need a scale we cannot guess; the wire format is float32.
        raise BusError(INVALID_AUDIO, f"audio must be float32 samples, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise BusError(INVALID_AUDIO, f"audio must be mono (1-D), got shape {arr.shape}")
    if arr.size == 0:
        raise BusError(INVALID_AUDIO, "audio is empty")
    if arr.size > MAX_AUDIO_SECONDS * SAMPLE_RATE:
        raise BusError(AUDIO_TOO_LONG, f"audio is {arr.size / SAMPLE_RATE:.2f} s; at most "
                                       f"{MAX_AUDIO_SECONDS:g} s per request")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise BusError(INVALID_AUDIO, "audio contains NaN or infinite samples")
    return arr


def check_details(fields: Mapping[str, Any] | DecodeFields, encode: Callable[[str], list[int]] | None,
                  model_name: str) -> Details:
    """The `Details` of a client's `prompt`, `temperature` and `timestamps` fields, or
    BusError(INVALID_FIELD) for a bad value, or for any of them on an engine that cannot decode
    them (`encode` None). The prompt is encoded as " " + its text, its last MAX_PROMPT_TOKENS kept."""
    checked_fields = fields if isinstance(fields, DecodeFields) else decode_fields(fields)
    granularity = checked_fields.timestamps
    temperature = checked_fields.temperature
    if temperature is not None:
        temperature = round(temperature, 3)
    text = (checked_fields.prompt or "").strip()
    if (text or temperature is not None or granularity is not None) and encode is None:
        raise BusError(INVALID_FIELD, f"model {model_name} cannot decode prompt, temperature or "
                                      "timestamps; use a ctranslate2 model")
    prompt_ids = encode(" " + text)[-MAX_PROMPT_TOKENS:] if text and encode else []
    return Details(tuple(prompt_ids), temperature, granularity)


def prepare_request(fields: Mapping[str, Any] | SttRequest, *, multilingual: bool,
                    known_languages: Mapping[str, int], model_name: str, policy: WindowPolicy,
                    vad_default: bool, encode_prompt: Callable[[str], list[int]] | None = None) -> SttRequest:
    """The `SttRequest` of a client's fields, or BusError with a client-fixable code.

    Fields: audio (required), language, task, beam_size, vad (default: the model's `vad`
    option), prompt, temperature, timestamps (see `check_details`). An SttRequest passes
    through unchanged, so preparing twice is harmless.
    """
    # faster-whisper's VAD imports in ~0.2 s: not in the agents, which import this module's checks.
    from model_manager.engines.whisper import vad as speech_detector
    if isinstance(fields, SttRequest):
        return fields
    # Checked at intake already when the fields came through an agent; not all of them do.
    checked_fields = decode_fields(fields)
    task = checked_fields.task or "transcribe"
    if task == "translate" and not multilingual:
        raise BusError(INVALID_FIELD, f"model {model_name} is English-only and cannot translate")
    beam_size = checked_fields.beam_size or MIN_BEAM_SIZE
    language = validate_language(checked_fields.language, multilingual, known_languages, model_name)
    details = check_details(checked_fields, encode_prompt, model_name)
    if details.requested:
        policy = WindowPolicy(min_window_s=FULL_WINDOW_S)
    use_vad = vad_default if checked_fields.vad is None else checked_fields.vad
    audio = validate_audio(fields.get("audio"))
    received_s = len(audio) / SAMPLE_RATE
    if use_vad:
        span = speech_detector.speech_span(audio)
        audio = audio[span[0]:span[1]] if span is not None else audio[:0]
    lead = round(policy.lead_s(len(audio) / SAMPLE_RATE) * SAMPLE_RATE) if len(audio) and language else 0
    if lead:  # silence before the speech: see window_policy
        audio = np.concatenate([np.zeros(lead, np.float32), audio])
    speech_s = len(audio) / SAMPLE_RATE
    window_s = policy.window_s(speech_s) if len(audio) else 0.0
    return SttRequest(
        audio=audio, language=language, task=task, beam_size=beam_size, vad=use_vad, window_s=window_s,
        max_tokens=policy.max_tokens(speech_s),
        repetition_penalty=policy.repetition_penalty(window_s) if window_s else 1.0,
        received_s=received_s, details=details)
