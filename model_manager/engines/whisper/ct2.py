"""Whisper speech-to-text on CTranslate2, batching separate requests into one generate call.

faster-whisper's BatchedInferencePipeline only batches the chunks of one file, so this engine
calls `ctranslate2.models.Whisper` directly with the features of every request in the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import ctranslate2
import tokenizers

from model_manager.engines.whisper import timestamps
from model_manager.engines.whisper.ct2_format import count_parameters
from model_manager.engines.whisper.engine import WhisperEngine
from model_manager.engines.whisper.features import log_mel_batch
from model_manager.engines.whisper.oom import out_of_memory_as_bus_error
from model_manager.engines.whisper.tokens import WhisperTokens
from model_manager.engines.whisper.window_batch import CallPlan, Window, WindowText, bounded

_REQUIRED_FILES = ("model.bin", "config.json", "tokenizer.json")


def _resolve_ct2_device(device: str) -> str:
    if device != "auto":
        return device
    # Ask CTranslate2 rather than torch: its wheel carries its own CUDA runtime.
    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


class CT2WhisperEngine(WhisperEngine):
    """A CTranslate2 Whisper model directory (model.bin, config.json, tokenizer.json).

    compute_type "auto" is int8 on CPU and float16 on CUDA. cpu_threads 0 lets CTranslate2
    pick (OMP_NUM_THREADS or its default). min_window_s and vad: see window_policy and vad
    (None: the default floor). Results: `Transcript`s (result.py), text stripped.
    """

    def __init__(self, name: str, model_dir: str | Path, device: str = "auto", compute_type: str = "auto",
                 cpu_threads: int = 0, min_window_s: float | None = None, vad: bool = True) -> None:
        model_dir = Path(model_dir)
        missing = [f for f in _REQUIRED_FILES if not (model_dir / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{model_dir} is not a CTranslate2 Whisper directory: "
                                    f"missing {', '.join(missing)}")
        self.name = name
        self.model_dir = model_dir
        self.device = _resolve_ct2_device(device)
        if compute_type == "auto":
            compute_type = "float16" if self.device == "cuda" else "int8"
        self.compute_type = compute_type
        self._model = ctranslate2.models.Whisper(str(model_dir), device=self.device,
                                                 compute_type=compute_type, intra_threads=cpu_threads)
        self.multilingual: bool = self._model.is_multilingual
        self.tokens = WhisperTokens(tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json")),
                                    self.multilingual)
        self.n_mels: int = self._model.n_mels
        self.num_parameters = count_parameters(model_dir / "model.bin")
        self.configure_windows(min_window_s, vad)
        self.encode_prompt = self.tokens.encode

    def transcribe_windows(self, windows: Sequence[Window]) -> list[WindowText]:
        """One generate call for all windows (plus one encode + detect_language first when a
        multilingual request has language None). Raises BusError(OUT_OF_MEMORY) on OOM."""
        if windows[0].request.details.requested:
            return timestamps.transcribe_windows(self._model, self.tokens, windows, self.name)
        plan = CallPlan.of(windows)
        features = ctranslate2.StorageView.from_array(
            log_mel_batch([w.audio for w in windows], self.n_mels, plan.frames))
        languages: list[str | None] = [w.request.language for w in windows]
        with out_of_memory_as_bus_error(f"{self.name} batch of {len(windows)}"):
            if any(lang is None for lang in languages):
                # Encode once and reuse the encoder output for generate, instead of letting
                # detect_language and generate each run the encoder.
                features = self._model.encode(features, to_cpu=False)
                detected = self._model.detect_language(features)
                languages = [lang if lang is not None else self.tokens.language_of(scores[0][0])
                             for lang, scores in zip(languages, detected, strict=True)]
            prompts = [self.tokens.prompt(lang, plan.task) for lang in languages]
            # CTranslate2's Whisper decodes at most max_length // 2 tokens (measured on 4.8.5,
            # as openai-whisper's sample_len); `bounded` cuts each window to its own bound, so
            # a version that decodes more only wastes steps.
            results = self._model.generate(
                features, prompts, beam_size=plan.beam_size, max_length=2 * plan.decode_tokens,
                repetition_penalty=plan.repetition_penalty, suppress_blank=True, suppress_tokens=[-1])
        texts = []
        for res, lang, window in zip(results, languages, windows, strict=True):
            ids, truncated = bounded(self.tokens.text_ids(res.sequences_ids[0]), window)
            texts.append(WindowText(self.tokens.decode(ids), lang, truncated))
        return texts

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "backend": "ctranslate2", "compute_type": self.compute_type,
                "multilingual": self.multilingual}

