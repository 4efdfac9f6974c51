"""Whisper speech-to-text on transformers (`WhisperForConditionalGeneration`).

Input features come from features.py, not from transformers' WhisperFeatureExtractor, so
this engine and the CTranslate2 one see identical encoder inputs (see `features.log_mel`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import transformers
from transformers.modeling_outputs import BaseModelOutput

from model_manager.engines.base import resolve_device
from model_manager.engines.whisper.engine import WhisperEngine
from model_manager.engines.whisper.features import N_FRAMES, log_mel_batch
from model_manager.engines.whisper.oom import out_of_memory_as_bus_error
from model_manager.engines.whisper.tokens import WhisperTokens
from model_manager.engines.whisper.window_batch import CallPlan, Window, WindowText, bounded
from model_manager.errors import OUT_OF_MEMORY, BusError

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _multilingual(config: transformers.WhisperConfig) -> bool:
    # English-only vocabularies have 51864 entries; every multilingual one has more.
    return config.vocab_size >= 51865


class HFWhisperEngine(WhisperEngine):
    """A transformers Whisper model: a local directory (e.g. from `model_manager.engines.whisper.ct2_convert`)
    or a hub name, loaded with `from_pretrained` (a hub name needs network or a warm HF cache).

    dtype "auto" is float32 on CPU and float16 on CUDA; "bfloat16" is accepted too. Windows
    shorter than 30 s run through the encoder with its positional table sliced to their
    length (transformers' own encoder refuses anything but 3000 frames).
    Results: `Transcript`s (result.py), text stripped, as the CTranslate2 engine's.
    """

    def __init__(self, name: str, model: str | Path, device: str = "auto", dtype: str = "auto",
                 min_window_s: float | None = None, vad: bool = True) -> None:
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
        self.multilingual = _multilingual(self._model.config)
        self.tokens = WhisperTokens(self._tokenizer.backend_tokenizer, self.multilingual)
        self.n_mels: int = self._model.config.num_mel_bins
        self.num_parameters = sum(p.numel() for p in self._model.parameters())
        self.configure_windows(min_window_s, vad)

    def transcribe_windows(self, windows: Sequence[Window]) -> list[WindowText]:
        """One encoder pass and one generate call for all windows (plus one decoder step to
        detect the language when a multilingual request has language None).
        Raises BusError(OUT_OF_MEMORY) on CUDA out-of-memory."""
        plan = CallPlan.of(windows)
        languages: list[str | None] = [w.request.language for w in windows]
        try:
            with out_of_memory_as_bus_error(f"{self.name} batch of {len(windows)}"), torch.inference_mode():
                sequences, final = self._generate(windows, languages, plan)
        except BusError as exc:
            if exc.code == OUT_OF_MEMORY and self.device == "cuda":
                # Hand the cached blocks back so the smaller batches the caller retries can fit.
                torch.cuda.empty_cache()
            raise
        texts = []
        for ids, lang, window in zip(sequences, final, windows, strict=True):
            text_ids, truncated = bounded(self.tokens.text_ids(ids), window)
            texts.append(WindowText(self._decode(text_ids), lang, truncated))
        return texts

    def _encode(self, features: torch.Tensor) -> BaseModelOutput:
        """The encoder on [N, n_mels, frames]: transformers' own for 3000 frames; for fewer, the
        same layers with the positional table cut to the window (what CTranslate2 does)."""
        encoder = self._model.get_encoder()
        if features.shape[-1] == N_FRAMES:
            return encoder(features)
        hidden = torch.nn.functional.gelu(encoder.conv1(features))
        hidden = torch.nn.functional.gelu(encoder.conv2(hidden)).permute(0, 2, 1)
        hidden = hidden + encoder.embed_positions.weight[: hidden.shape[1]]
        for layer in encoder.layers:
            hidden = layer(hidden, None)
        return BaseModelOutput(last_hidden_state=encoder.layer_norm(hidden))

    def _generate(self, windows: Sequence[Window], languages: list[str | None],
                  plan: CallPlan) -> tuple[list[list[int]], list[str]]:
        features = torch.from_numpy(log_mel_batch([w.audio for w in windows], self.n_mels, plan.frames))
        features = features.to(self.device, _DTYPES[self.dtype])
        # Encode once: language detection and generate both reuse the encoder output.
        encoder_outputs = self._encode(features)
        if any(lang is None for lang in languages):
            lang_ids = self._model.detect_language(encoder_outputs=encoder_outputs).tolist()
            by_id = {i: code for code, i in self.tokens.languages.items()}
            languages = [lang if lang is not None else by_id[i]
                         for lang, i in zip(languages, lang_ids, strict=True)]
        kwargs: dict[str, object] = {}
        if self.multilingual:
            # transformers builds <|sot|><|lang|><|task|><|notimestamps|> per item from these;
            # English-only models take neither (transformers raises if given).
            kwargs = {"language": list(languages), "task": plan.task}
        if plan.repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = plan.repetition_penalty
        out = self._model.generate(
            encoder_outputs=encoder_outputs, num_beams=plan.beam_size, do_sample=False,
            return_timestamps=False, max_new_tokens=plan.decode_tokens, **kwargs)
        sequences = out.tolist() if isinstance(out, torch.Tensor) else out["sequences"].tolist()
        # Every entry is set by now (English-only models normalise None to "en" in prepare).
        final_languages = [lang if lang is not None else "en" for lang in languages]
        return sequences, final_languages

    def _decode(self, text_ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(text_ids), skip_special_tokens=False,
                                      clean_up_tokenization_spaces=False).strip()

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "backend": "transformers", "dtype": self.dtype,
                "multilingual": self.multilingual}
