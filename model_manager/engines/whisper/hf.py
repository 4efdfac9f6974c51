"""Whisper speech-to-text on transformers (`WhisperForConditionalGeneration`).

Input features come from whisper_common, not from transformers' WhisperFeatureExtractor, so
this engine and the CTranslate2 one see identical encoder inputs (see `whisper_common.log_mel`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import transformers

from model_manager.engines.base import Request, Result, resolve_device
from model_manager.engines.whisper.common import (
    WhisperEngine,
    WhisperTokens,
    check_uniform,
    log_mel_batch,
    out_of_memory_as_bus_error,
)
from model_manager.errors import OUT_OF_MEMORY, BusError

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _multilingual(config: transformers.WhisperConfig) -> bool:
    # English-only vocabularies have 51864 entries; every multilingual one has more.
    return config.vocab_size >= 51865


class HFWhisperEngine(WhisperEngine):
    """A transformers Whisper model: a local directory (e.g. from `model_manager.engines.whisper.ct2_convert`)
    or a hub name, loaded with `from_pretrained` (a hub name needs network or a warm HF cache).

    dtype "auto" is float32 on CPU and float16 on CUDA; "bfloat16" is accepted too.
    Results: {"text": stripped str, "language": code}, as the CTranslate2 engine.
    """


    def __init__(self, name: str, model: str | Path, device: str = "auto", dtype: str = "auto") -> None:
        self.name = name
        self.device = resolve_device(device)
        if dtype == "auto":
            dtype = "float16" if self.device == "cuda" else "float32"
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be auto or one of {', '.join(_DTYPES)}, got {dtype!r}")
        self.dtype = dtype
        source = str(model)
        self._model = transformers.WhisperForConditionalGeneration.from_pretrained(
            source, dtype=_DTYPES[dtype]).to(self.device).eval()
        self._tokenizer = transformers.AutoTokenizer.from_pretrained(source)
        self.tokens = WhisperTokens.from_vocab(self._tokenizer.get_vocab())
        self.multilingual = _multilingual(self._model.config)
        self.n_mels: int = self._model.config.num_mel_bins
        self.num_parameters = sum(p.numel() for p in self._model.parameters())

    def transcribe_windows(self, prepared: Sequence[Request]) -> list[Result]:
        """One encoder pass and one generate call for all requests (plus one decoder step to
        detect the language when a multilingual request has language None).
        Raises BusError(OUT_OF_MEMORY) on CUDA out-of-memory."""
        options = check_uniform(prepared)
        languages: list[str | None] = [r["language"] for r in prepared]
        try:
            with out_of_memory_as_bus_error(f"{self.name} batch of {len(prepared)}"), torch.inference_mode():
                sequences, languages = self._generate(prepared, languages, options.task, options.beam_size)
        except BusError as exc:
            if exc.code == OUT_OF_MEMORY and self.device == "cuda":
                # Hand the cached blocks back so the smaller batches the caller retries can fit.
                torch.cuda.empty_cache()
            raise
        return [{"text": self._decode(ids), "language": lang}
                for ids, lang in zip(sequences, languages, strict=True)]

    def _generate(self, prepared: Sequence[Request], languages: list[str | None], task: str,
                  beam_size: int) -> tuple[list[list[int]], list[str]]:
        features = torch.from_numpy(log_mel_batch([r["audio"] for r in prepared], self.n_mels))
        features = features.to(self.device, _DTYPES[self.dtype])
        # Encode once: language detection and generate both reuse the encoder output.
        encoder_outputs = self._model.get_encoder()(features)
        if any(lang is None for lang in languages):
            lang_ids = self._model.detect_language(encoder_outputs=encoder_outputs).tolist()
            by_id = {i: code for code, i in self.tokens.languages.items()}
            languages = [lang if lang is not None else by_id[i]
                         for lang, i in zip(languages, lang_ids, strict=True)]
        kwargs: dict[str, object] = {}
        if self.multilingual:
            # transformers builds <|sot|><|lang|><|task|><|notimestamps|> per item from these;
            # English-only models take neither (transformers raises if given).
            kwargs = {"language": list(languages), "task": task}
        out = self._model.generate(
            encoder_outputs=encoder_outputs, num_beams=beam_size, do_sample=False,
            return_timestamps=False, **kwargs)
        sequences = out.tolist() if isinstance(out, torch.Tensor) else out["sequences"].tolist()
        # Every entry is set by now (English-only models normalise None to "en" in prepare).
        final_languages = [lang if lang is not None else "en" for lang in languages]
        return sequences, final_languages

    def _decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(self.tokens.text_ids(ids), skip_special_tokens=False,
                                      clean_up_tokenization_spaces=False).strip()

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "backend": "transformers", "dtype": self.dtype,
                "multilingual": self.multilingual}
