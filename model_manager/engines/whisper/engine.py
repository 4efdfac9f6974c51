"""What the CTranslate2 and transformers Whisper engines share, so that both see the same
input features, prompts, windows and bounds and therefore give the same text.

- `request.prepare_request` checks a request once and plans its window (window_policy).
- `log_mel_batch` turns clips of different lengths into one [N, n_mels, frames] array.
- `WhisperTokens` knows the special token ids and builds the decoder prompt.
- `WhisperEngine.run_batch` answers requests without speech at once, cuts audio longer than
  one 30 s window into windows, runs the windows that share a window length together
  through the subclass's `transcribe_windows`, and joins each request's texts into its
  `Transcript` (result.py).
"""

from __future__ import annotations

import functools
import re
from abc import abstractmethod
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from faster_whisper.feature_extractor import FeatureExtractor

from model_manager.engines.base import Engine
from model_manager.engines.whisper import vad as speech_detector
from model_manager.engines.whisper.request import SAMPLE_RATE, SttRequest, prepare_request
from model_manager.engines.whisper.result import Transcript
from model_manager.engines.whisper.window_policy import (
    DEFAULT_MIN_WINDOW_S,
    FULL_WINDOW_S,
    WindowPolicy,
    window_frames,
)
from model_manager.engines.whisper.windows import split_into_windows
from model_manager.errors import OUT_OF_MEMORY, BusError

#: Windows per engine call, unless the batch holds more requests than this: a long request's
#: windows batch together, without one hour of audio becoming one forward pass.
MAX_WINDOWS_PER_CALL = 16
#: The encoder's full input: 3000 frames of 10 ms.
N_FRAMES = 3000
#: Decoder context of every Whisper size; prompt + generated tokens must fit in it.
MAX_TARGET_POSITIONS = 448
#: Text tokens Whisper decodes at most from one window when nothing tighter bounds it
#: (openai-whisper's sample_len: half the decoder context; CTranslate2 stops there too).
MAX_TEXT_TOKENS = MAX_TARGET_POSITIONS // 2

_LANGUAGE_TOKEN = re.compile(r"^<\|([a-z]{2,3})\|>$")


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


@functools.lru_cache(maxsize=4)
def _feature_extractor(n_mels: int) -> FeatureExtractor:
    # Building the mel filter bank costs a few ms; the extractor is stateless after that
    # (as long as chunk_length is never passed, which would mutate it).
    return FeatureExtractor(feature_size=n_mels)


def log_mel(audio: np.ndarray, n_mels: int = 80, frames: int = N_FRAMES) -> np.ndarray:
    """[n_mels, frames] float32 log-mel of one clip of at most `frames` x 10 ms, exactly as
    faster-whisper feeds the encoder: the spectrogram of the clip alone, last frame dropped,
    then padded with 0.0 in the log-mel domain. (Padding the *audio* with silence, as
    transformers does, gives about -0.69 there instead and measurably worse WER: 9.6% against
    5.3% greedy.)"""
    mel = _feature_extractor(n_mels)(audio)[:, :-1]
    out = np.zeros((n_mels, frames), dtype=np.float32)
    n = min(mel.shape[1], frames)
    out[:, :n] = mel[:, :n]
    return out


def log_mel_batch(clips: Sequence[np.ndarray], n_mels: int = 80, frames: int = N_FRAMES) -> np.ndarray:
    """[N, n_mels, frames] float32 features for clips of different lengths (see `log_mel`)."""
    return np.stack([log_mel(c, n_mels, frames) for c in clips])


class WindowOptions(NamedTuple):
    task: str
    beam_size: int


def check_uniform(requests: Sequence[Mapping[str, Any]]) -> WindowOptions:
    """(task, beam_size) shared by a batch of window dicts (timestamps.py's path); ValueError
    if the caller mixed batch keys."""
    if not requests:
        raise ValueError("empty batch")
    shared = {(r.get("task", "transcribe"), int(r.get("beam_size", 1))) for r in requests}
    if len(shared) > 1:
        raise ValueError("requests with different task or beam_size in one batch")
    return WindowOptions(*shared.pop())


@dataclass(frozen=True, eq=False)
class Window:
    """One encoder window of a request: at most `request.window_s` of its audio, decoded to at
    most `max_tokens` text tokens (None: MAX_TEXT_TOKENS)."""

    audio: np.ndarray
    request: SttRequest
    max_tokens: int | None

    @property
    def call_key(self) -> tuple[Any, ...]:
        """What one generate call takes once for all its items."""
        r = self.request
        return (r.task, r.beam_size, r.window_s, r.repetition_penalty, r.details.batch_key())


@dataclass(frozen=True)
class WindowText:
    text: str
    language: str
    #: The decoder reached the window's token bound: the text was cut there (a loop, usually).
    truncated: bool
    #: "segments" (and "words") when the request asked for timestamps (see timestamps.py).
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CallPlan:
    """The shared settings of one generate call over `windows` (see Window.call_key)."""

    task: str
    beam_size: int
    frames: int
    repetition_penalty: float
    #: Text tokens to decode at most: one more than the largest bound, so a window that
    #: reaches its bound is known to have been cut; or MAX_TEXT_TOKENS.
    decode_tokens: int

    @classmethod
    def of(cls, windows: Sequence[Window]) -> CallPlan:
        if not windows:
            raise ValueError("empty batch")
        keys = {w.call_key for w in windows}
        if len(keys) > 1:
            raise ValueError(f"windows of different calls in one batch: {sorted(keys)}")
        task, beam_size, window_s, penalty, _ = keys.pop()
        bounds = [w.max_tokens for w in windows]
        decode = MAX_TEXT_TOKENS if None in bounds else min(MAX_TEXT_TOKENS, max(b for b in bounds if b) + 1)
        return cls(task, beam_size, window_frames(window_s), penalty, decode)


def bounded(ids: Sequence[int], window: Window) -> tuple[list[int], bool]:
    """A window's decoded text ids cut to its own bound, and whether the bound cut them.
    Greedy and beam decoding of one item do not depend on its batch neighbours, so cutting
    at the item's own bound gives what decoding it alone with that bound gives."""
    bound = MAX_TEXT_TOKENS if window.max_tokens is None else min(window.max_tokens, MAX_TEXT_TOKENS)
    # Decoding stops one token past a bound below Whisper's own limit (see CallPlan), and at
    # that limit otherwise: reaching either means the text did not end by itself.
    stop = min(bound + 1, MAX_TEXT_TOKENS)
    ids = list(ids)
    return ids[:bound], len(ids) >= stop


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
    """What every Whisper engine shares: request checks, window planning, the batch key, the
    cost unit and long audio. Subclasses set `multilingual` and `tokens` when they load, call
    `configure_windows`, and implement `transcribe_windows`."""

    task = "stt"
    multilingual: bool
    tokens: WhisperTokens
    #: Text -> token ids without special tokens, for `prompt`; None: the engine cannot decode
    #: prompts, temperatures or timestamps (see timestamps.py).
    encode_prompt: Callable[[str], list[int]] | None = None
    policy: WindowPolicy = WindowPolicy()
    vad: bool = True

    def configure_windows(self, min_window_s: float | None, vad: bool) -> None:
        """The model's `min_window_s` and `vad` options (see window_policy, vad)."""
        floor = DEFAULT_MIN_WINDOW_S if min_window_s is None else float(min_window_s)
        self.policy = WindowPolicy(min_window_s=floor)
        if not isinstance(vad, bool):
            raise ValueError(f"option vad must be true or false, got {vad!r}")
        self.vad = vad
        if vad:
            speech_detector.load()

    def prepare(self, fields: Mapping[str, Any] | SttRequest) -> SttRequest:
        return prepare_request(fields, multilingual=self.multilingual, known_languages=self.tokens.languages,
                               model_name=self.name, policy=self.policy, vad_default=self.vad,
                               encode_prompt=self.encode_prompt)

    def batch_key(self, request: SttRequest) -> Hashable:
        """Requests share a generate call when they share these, window length included."""
        key = (self.name, request.language, request.task, request.beam_size, request.window_s,
               request.repetition_penalty)
        return key + (request.details.batch_key(),) if request.details.requested else key

    def bucket(self, request: SttRequest) -> Hashable:
        """Requests of one window length cost alike: the scheduler learns batch sizes per bucket."""
        return request.window_s

    def cost(self, request: SttRequest) -> float:
        """Encoder seconds: what the device actually spends on the request."""
        return request.windows * request.window_s

    def warmup_requests(self, count: int) -> list[SttRequest]:
        # Five seconds of silence with the detector off: the short window real commands get,
        # and the encoder, which dominates, costs what it costs on speech.
        silence = np.zeros(5 * SAMPLE_RATE, dtype=np.float32)
        return [self.prepare({"audio": silence, "vad": False}) for _ in range(count)]

    def run_batch(self, requests: Sequence[SttRequest | Mapping[str, Any]]) -> list[Transcript]:
        """One `Transcript` per request, in order.

        A request without speech gets "" at once and costs no model call. Audio longer than
        one window is cut at pauses (`windows.split_into_windows`); windows that share a
        window length and decoding settings run together, and each request's window texts
        are joined in order. A request's language is its first window's (each window of a
        multilingual request without a language detects its own); `truncated` is true when
        any of its windows hit its token bound.
        """
        prepared = [self.prepare(r) for r in requests]
        windows = [
            (owner, Window(piece, request, None if request.max_tokens is None
                           else self.policy.max_tokens(len(piece) / SAMPLE_RATE)))
            for owner, request in enumerate(prepared) if request.has_speech
            for piece in split_into_windows(request.audio, FULL_WINDOW_S)
        ]
        calls: dict[tuple[Any, ...], list[int]] = {}
        for index, (_, window) in enumerate(windows):
            calls.setdefault(window.call_key, []).append(index)
        per_call = max(MAX_WINDOWS_PER_CALL, len(prepared))
        texts: list[WindowText | None] = [None] * len(windows)
        for indices in calls.values():
            for start in range(0, len(indices), per_call):
                chunk = indices[start:start + per_call]
                for index, text in zip(chunk, self.transcribe_windows([windows[i][1] for i in chunk]),
                                       strict=True):
                    texts[index] = text
        parts: list[list[WindowText]] = [[] for _ in prepared]
        for (owner, _), text in zip(windows, texts, strict=True):
            assert text is not None
            parts[owner].append(text)
        joined = [self._joined(request, own) for request, own in zip(prepared, parts, strict=True)]
        from model_manager.engines.whisper.timestamps import attach_details  # it imports this module

        return attach_details(joined, [(owner, w.audio) for owner, w in windows],
                              [{"text": t.text, **t.details} for t in texts if t is not None])

    @staticmethod
    def _joined(request: SttRequest, parts: Sequence[WindowText]) -> Transcript:
        return Transcript(
            text=" ".join(p.text for p in parts if p.text),
            language=next((p.language for p in parts), request.language),
            truncated=any(p.truncated for p in parts),
        )

    @abstractmethod
    def transcribe_windows(self, windows: Sequence[Window]) -> list[WindowText]:
        """One WindowText per window, in order, in as few forward passes as the engine can.
        All windows share one `CallPlan`. Raises BusError(OUT_OF_MEMORY) on OOM."""

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "min_window_s": self.policy.min_window_s, "vad": self.vad}
