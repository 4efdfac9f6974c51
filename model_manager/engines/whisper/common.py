"""What the CTranslate2 and transformers Whisper engines share, so that both see the same
input features, prompts and validation and therefore give the same text.

- `prepare_stt_request` validates and normalises an STT request (see `engines.base`).
- `log_mel_batch` turns clips of different lengths into one [N, n_mels, 3000] array.
- `WhisperTokens` knows the special token ids and builds the decoder prompt.
- `WhisperEngine.run_batch` cuts audio longer than one 30 s window into windows, runs the
  windows of every request together through the subclass's `transcribe_windows`, and
  joins each request's texts.
"""

from __future__ import annotations

import functools
import re
from abc import abstractmethod
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from faster_whisper.feature_extractor import FeatureExtractor

from model_manager.engines.base import Engine, Request, Result
from model_manager.engines.whisper.windows import split_into_windows
from model_manager.errors import (
    AUDIO_TOO_LONG,
    INVALID_AUDIO,
    INVALID_FIELD,
    MISSING_FIELD,
    OUT_OF_MEMORY,
    BusError,
)

SAMPLE_RATE = 16000
#: One Whisper window: all the encoder ever sees at once. Longer audio is cut into windows.
WINDOW_SECONDS = 30.0
#: The engine's own cap on one request; the agents refuse beyond limits.max_audio_seconds first.
MAX_AUDIO_SECONDS = 3600.0
#: Windows per engine call, unless the batch holds more requests than this: a long request's
#: windows batch together, without one hour of audio becoming one forward pass.
MAX_WINDOWS_PER_CALL = 16
#: The encoder always sees 30 s: 3000 frames of 10 ms.
N_FRAMES = 3000
TASKS = ("transcribe", "translate")
MIN_BEAM_SIZE = 1
MAX_BEAM_SIZE = 10
#: Decoder context of every Whisper size; prompt + generated tokens must fit in it.
MAX_TARGET_POSITIONS = 448

_LANGUAGE_TOKEN = re.compile(r"^<\|([a-z]{2,3})\|>$")


@dataclass(frozen=True)
class WhisperOptions:
    """Decoding options of one request, after validation.

    language: a code such as "en", or None to detect it (multilingual models only; English-only
    models normalise None to "en"). task: "transcribe" or "translate". beam_size: 1 is greedy.
    """

    language: str | None = None
    task: str = "transcribe"
    beam_size: int = 1

    @classmethod
    def from_request(cls, request: Mapping[str, Any]) -> WhisperOptions:
        """Read the fields of an already prepared request (no validation)."""
        return cls(language=request.get("language"), task=request.get("task", "transcribe"),
                   beam_size=int(request.get("beam_size", 1)))


@dataclass(frozen=True)
class WhisperTokens:
    """Special token ids of a Whisper tokenizer, and the languages the model knows."""

    sot: int
    eot: int
    no_timestamps: int
    transcribe: int
    translate: int
    #: language code -> token id, e.g. {"en": 50259, ...} on multilingual vocabularies.
    languages: Mapping[str, int]

    @classmethod
    def from_vocab(cls, vocab: Mapping[str, int]) -> WhisperTokens:
        """Build from a token -> id mapping that includes the added special tokens.

        Language tokens are the `<|xx|>` tokens between <|startoftranscript|> and
        <|translate|>; that is where every Whisper vocabulary puts them (large-v3 adds "yue").
        """
        try:
            sot = vocab["<|startoftranscript|>"]
            translate = vocab["<|translate|>"]
            tokens = cls(sot=sot, eot=vocab["<|endoftext|>"], no_timestamps=vocab["<|notimestamps|>"],
                         transcribe=vocab["<|transcribe|>"], translate=translate, languages={})
        except KeyError as exc:
            raise ValueError(f"not a Whisper vocabulary: no {exc.args[0]} token") from exc
        languages = {m.group(1): i for t, i in vocab.items()
                     if (m := _LANGUAGE_TOKEN.match(t)) and sot < i < translate}
        object.__setattr__(tokens, "languages", dict(sorted(languages.items(), key=lambda kv: kv[1])))
        return tokens

    def prompt(self, multilingual: bool, language: str, task: str) -> list[int]:
        """Decoder prompt ids: <|startoftranscript|> [<|lang|> <|task|>] <|notimestamps|>.

        English-only models were trained without the language and task tokens.
        """
        if not multilingual:
            return [self.sot, self.no_timestamps]
        task_id = self.translate if task == "translate" else self.transcribe
        return [self.sot, self.languages[language], task_id, self.no_timestamps]

    def text_ids(self, ids: Sequence[int]) -> list[int]:
        """Drop special and timestamp tokens (every id from <|endoftext|> up)."""
        return [i for i in ids if i < self.eot]

    def language_of(self, token: str) -> str:
        """'<|de|>' -> 'de' (CTranslate2's detect_language returns token strings)."""
        m = _LANGUAGE_TOKEN.match(token)
        if m is None:
            raise ValueError(f"not a language token: {token!r}")
        return m.group(1)


def validate_language(language: object, multilingual: bool, known: Mapping[str, int] | Sequence[str],
                      model_name: str) -> str | None:
    """Normalised language of a request, or BusError(INVALID_FIELD).

    English-only models accept None or "en" and return "en". Multilingual models accept a code
    in `known` (case-insensitive) or None, meaning: detect it.
    """
    if language is not None and not isinstance(language, str):
        raise BusError(INVALID_FIELD, f"language must be a string or null, got {type(language).__name__}")
    code = language.strip().lower() if isinstance(language, str) else None
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


def validate_options(request: Mapping[str, Any], multilingual: bool, known_languages: Mapping[str, int],
                     model_name: str) -> WhisperOptions:
    """Options of a raw request with defaults filled in, or BusError(INVALID_FIELD)."""
    task = request.get("task") or "transcribe"
    if task not in TASKS:
        raise BusError(INVALID_FIELD, f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if task == "translate" and not multilingual:
        raise BusError(INVALID_FIELD, f"model {model_name} is English-only and cannot translate")
    beam_size = request.get("beam_size")
    if beam_size is None:
        beam_size = 1
    # bool is an int subclass; True as a beam size is a client bug, not 1.
    if isinstance(beam_size, bool) or not isinstance(beam_size, (int, np.integer)):
        raise BusError(INVALID_FIELD, f"beam_size must be an integer, got {beam_size!r}")
    if not MIN_BEAM_SIZE <= beam_size <= MAX_BEAM_SIZE:
        raise BusError(INVALID_FIELD,
                       f"beam_size must be in {MIN_BEAM_SIZE}..{MAX_BEAM_SIZE}, got {beam_size}")
    language = validate_language(request.get("language"), multilingual, known_languages, model_name)
    return WhisperOptions(language=language, task=task, beam_size=int(beam_size))


def prepare_stt_request(request: Mapping[str, Any], multilingual: bool, known_languages: Mapping[str, int],
                        model_name: str) -> dict[str, Any]:
    """The normalised request: every input key kept, plus float32 `audio`, `language`
    (None only for detection on multilingual models), `task` and int `beam_size`.
    Idempotent, so engines may call it again inside run_batch."""
    options = validate_options(request, multilingual, known_languages, model_name)
    audio = validate_audio(request.get("audio"))
    return {**request, "audio": audio, "language": options.language, "task": options.task,
            "beam_size": options.beam_size}


def audio_seconds(request: Mapping[str, Any]) -> float:
    audio = request.get("audio")
    return 0.0 if audio is None else len(audio) / SAMPLE_RATE


@functools.lru_cache(maxsize=4)
def _feature_extractor(n_mels: int) -> FeatureExtractor:
    # Building the mel filter bank costs a few ms; the extractor is stateless after that
    # (as long as chunk_length is never passed, which would mutate it).
    return FeatureExtractor(feature_size=n_mels)


def log_mel(audio: np.ndarray, n_mels: int = 80) -> np.ndarray:
    """[n_mels, 3000] float32 log-mel of one clip of at most 30 s, exactly as faster-whisper
    feeds the encoder: the spectrogram of the clip alone, last frame dropped, then padded with
    0.0 in the log-mel domain. (Padding the *audio* with silence, as transformers does, gives
    about -0.69 there instead and measurably worse WER: 9.6% against 5.3% greedy.)"""
    mel = _feature_extractor(n_mels)(audio)[:, :-1]
    out = np.zeros((n_mels, N_FRAMES), dtype=np.float32)
    n = min(mel.shape[1], N_FRAMES)
    out[:, :n] = mel[:, :n]
    return out


def log_mel_batch(clips: Sequence[np.ndarray], n_mels: int = 80) -> np.ndarray:
    """[N, n_mels, 3000] float32 features for clips of different lengths (see `log_mel`)."""
    return np.stack([log_mel(c, n_mels) for c in clips])


def check_uniform(requests: Sequence[Mapping[str, Any]]) -> WhisperOptions:
    """The task and beam size shared by a batch (one generate call takes one of each);
    ValueError if the caller mixed batch keys. Languages may differ: prompts are per item."""
    if not requests:
        raise ValueError("empty batch")
    first = WhisperOptions.from_request(requests[0])
    for r in requests[1:]:
        o = WhisperOptions.from_request(r)
        if (o.task, o.beam_size) != (first.task, first.beam_size):
            raise ValueError("requests with different task or beam_size in one batch")
    return first


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError)
                                            and "out of memory" in str(exc).lower())


@contextmanager
def out_of_memory_as_bus_error(what: str) -> Iterator[None]:
    """Re-raise an out-of-memory error as BusError(OUT_OF_MEMORY) so the model manager can
    split the batch and retry; every other error passes through unchanged."""
    try:
        yield
    except (RuntimeError, MemoryError) as exc:
        if is_out_of_memory(exc):
            raise BusError(OUT_OF_MEMORY, f"{what}: {exc}") from exc
        raise


class WhisperEngine(Engine):
    """What every Whisper engine shares: request checks, the batch key, the cost unit and
    long audio. Subclasses set `multilingual` and `tokens` when they load, and implement
    `transcribe_windows`."""

    task = "stt"
    multilingual: bool
    tokens: WhisperTokens
    #: Text -> token ids without special tokens, for `prompt`; None: the engine cannot decode
    #: prompts, temperatures or timestamps (see timestamps.py).
    encode_prompt: Callable[[str], list[int]] | None = None

    def prepare(self, request: Request) -> Request:
        from model_manager.engines.whisper import timestamps  # it imports this module

        prepared = prepare_stt_request(request, self.multilingual, self.tokens.languages, self.name)
        return timestamps.prepare_details(prepared, self.encode_prompt, self.name)

    def batch_key(self, request: Request) -> Hashable:
        from model_manager.engines.whisper.timestamps import Details

        key = (self.name, request.get("language"), request.get("task", "transcribe"),
               int(request.get("beam_size", 1)))
        details = Details.of(request)
        return key + (details.batch_key(),) if details.requested else key

    def cost(self, request: Request) -> float:
        return audio_seconds(request)

    def run_batch(self, requests: Sequence[Request]) -> list[Result]:
        """One {"text", "language"} per request, in order. Audio longer than one window is cut
        at pauses (`audio.split_into_windows`); the windows of all requests run together, and
        each request's window texts are joined in order. A request's language is its first
        window's (each window of a multilingual request without a language detects its own)."""
        prepared = [self.prepare(r) for r in requests]
        windows = [(owner, piece) for owner, request in enumerate(prepared)
                   for piece in split_into_windows(request["audio"], WINDOW_SECONDS)]
        per_call = max(MAX_WINDOWS_PER_CALL, len(prepared))
        results: list[Result] = []
        for start in range(0, len(windows), per_call):
            chunk = windows[start:start + per_call]
            results += self.transcribe_windows([{**prepared[o], "audio": piece} for o, piece in chunk])
        texts: list[list[str]] = [[] for _ in prepared]
        languages: list[str | None] = [None] * len(prepared)
        for (owner, _), result in zip(windows, results, strict=True):
            if result["text"]:
                texts[owner].append(result["text"])
            languages[owner] = languages[owner] or result["language"]
        from model_manager.engines.whisper.timestamps import attach_details

        joined = [{"text": " ".join(parts), "language": language}
                  for parts, language in zip(texts, languages, strict=True)]
        return attach_details(joined, windows, results)

    @abstractmethod
    def transcribe_windows(self, prepared: Sequence[Request]) -> list[Result]:
        """One {"text", "language"} per prepared request of at most one window, in order, in
        as few forward passes as the engine can. Raises BusError(OUT_OF_MEMORY) on OOM."""
