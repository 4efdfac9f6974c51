"""What the CTranslate2 and transformers Whisper engines share, so that both check, plan and
join requests alike and therefore give the same text.

`WhisperEngine.run_batch` answers requests without speech at once, cuts audio longer than
one 30 s window into windows, runs the windows that share a window length together through
the subclass's `transcribe_windows`, and joins each request's windows into its `Transcript`
(window_batch.transcript_of).

With unit scheduling (model_manager/units.py), a request longer than one window is instead
`split` into one `WindowUnit` per window, each queued and batched on its own beside other
requests, and `join` makes its `Transcript` from their `WindowPart`s: the same windows, the
same decoding and the same joining, so the same transcript as when it runs whole.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from model_manager.engines.base import Engine
from model_manager.engines.whisper import vad as speech_detector
from model_manager.engines.whisper.request import SAMPLE_RATE, SttRequest, prepare_request
from model_manager.engines.whisper.result import Transcript
from model_manager.engines.whisper.tokens import WhisperTokens
from model_manager.engines.whisper.window_batch import (
    Window,
    WindowPart,
    WindowText,
    WindowUnit,
    transcript_of,
)
from model_manager.engines.whisper.window_policy import DEFAULT_MIN_WINDOW_S, FULL_WINDOW_S, WindowPolicy
from model_manager.engines.whisper.windows import split_into_windows

#: Windows per engine call, unless the batch holds more requests than this: a long request's
#: windows batch together, without one hour of audio becoming one forward pass.
MAX_WINDOWS_PER_CALL = 16


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

    def batch_key(self, request: SttRequest | WindowUnit) -> Hashable:
        """Requests share a generate call when they share these, window length included; a
        window unit has its request's."""
        if isinstance(request, WindowUnit):
            request = request.window.request
        key = (self.name, request.language, request.task, request.beam_size, request.window_s,
               request.repetition_penalty)
        return key + (request.details.batch_key(),) if request.details.requested else key

    def bucket(self, request: SttRequest | WindowUnit) -> Hashable:
        """Requests of one window length cost alike: the scheduler learns batch sizes per bucket."""
        return request.window.request.window_s if isinstance(request, WindowUnit) else request.window_s

    def cost(self, request: SttRequest | WindowUnit) -> float:
        """Encoder seconds: what the device actually spends on the request."""
        if isinstance(request, WindowUnit):
            return request.window.request.window_s
        return request.windows * request.window_s

    def split(self, request: SttRequest | WindowUnit) -> list[SttRequest | WindowUnit]:
        """One `WindowUnit` per window of a request longer than one window (cut as `run_batch`
        cuts it); any other request is one unit, itself."""
        if isinstance(request, WindowUnit) or not request.has_speech:
            return [request]
        windows = self._windows(request)
        return [request] if len(windows) < 2 else [WindowUnit(window) for window in windows]

    def join(self, request: SttRequest, results: Sequence[Any]) -> Transcript:
        """The request's transcript from its units' `WindowPart`s, in order; a request that
        did not split has its one `Transcript`."""
        if len(results) == 1 and isinstance(results[0], Transcript):
            return results[0]
        if not all(isinstance(part, WindowPart) for part in results):
            raise ValueError(f"{self.name}: join expects one WindowPart per window")
        return transcript_of(request, [(part.window, part.text) for part in results])

    def _windows(self, request: SttRequest | WindowUnit) -> list[Window]:
        """What a request decodes: a unit its window; a request its audio's windows, none
        without speech."""
        if isinstance(request, WindowUnit):
            return [request.window]
        if not request.has_speech:
            return []
        return [self._window(piece, request) for piece in split_into_windows(request.audio, FULL_WINDOW_S)]

    def _window(self, piece: np.ndarray, request: SttRequest) -> Window:
        bound = None if request.max_tokens is None else self.policy.max_tokens(len(piece) / SAMPLE_RATE)
        return Window(piece, request, bound)

    def warmup_requests(self, count: int) -> list[SttRequest]:
        # Five seconds of silence with the detector off: the short window real commands get,
        # and the encoder, which dominates, costs what it costs on speech.
        silence = np.zeros(5 * SAMPLE_RATE, dtype=np.float32)
        return [self.prepare({"audio": silence, "vad": False}) for _ in range(count)]

    def run_batch(self, requests: Sequence[SttRequest | WindowUnit | Mapping[str, Any]]
                  ) -> list[Transcript | WindowPart]:
        """One `Transcript` per request (a `WindowPart` per `WindowUnit`), in order.

        A request without speech gets "" at once and costs no model call. Audio longer than
        one window is cut at pauses (`windows.split_into_windows`); windows that share a
        window length and decoding settings run together, and each request's window texts
        are joined in order. A request's language is its first window's (each window of a
        multilingual request without a language detects its own); `truncated` is true when
        any of its windows hit its token bound.
        """
        prepared = [r if isinstance(r, WindowUnit) else self.prepare(r) for r in requests]
        windows = [(owner, window) for owner, request in enumerate(prepared)
                   for window in self._windows(request)]
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
        parts: list[list[tuple[Window, WindowText]]] = [[] for _ in prepared]
        for (owner, window), text in zip(windows, texts, strict=True):
            assert text is not None
            parts[owner].append((window, text))
        return [WindowPart(*own[0]) if isinstance(request, WindowUnit) else transcript_of(request, own)
                for request, own in zip(prepared, parts, strict=True)]

    @abstractmethod
    def transcribe_windows(self, windows: Sequence[Window]) -> list[WindowText]:
        """One WindowText per window, in order, in as few forward passes as the engine can.
        All windows share one `CallPlan`. Raises BusError(OUT_OF_MEMORY) on OOM."""

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "min_window_s": self.policy.min_window_s, "vad": self.vad}
