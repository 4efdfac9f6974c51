"""Build engines from `ModelSpec`s. Imports are lazy so a missing optional backend only
matters when a model actually uses it."""

from __future__ import annotations

from model_manager.config import ModelSpec
from model_manager.engines.base import Engine


def weights_installed(spec: ModelSpec) -> bool:
    from model_manager.engines.whisper import weights

    return weights.installed(spec.weights) if spec.weights else True


def build_engine(spec: ModelSpec) -> Engine:
    if spec.engine == "ctranslate2":
        from model_manager.engines.whisper import weights
        from model_manager.engines.whisper.ct2 import CT2WhisperEngine

        return CT2WhisperEngine(
            spec.name,
            weights.resolve(spec.weights),
            device=spec.device,
            compute_type=spec.compute_type,
            **spec.options,
        )
    if spec.engine == "transformers":
        from model_manager.engines.whisper import weights
        from model_manager.engines.whisper.hf import HFWhisperEngine

        return HFWhisperEngine(
            spec.name,
            weights.resolve(spec.weights),
            device=spec.device,
            dtype=spec.compute_type,
            **spec.options,
        )
    if spec.engine == "kokoro":
        from model_manager.engines.kokoro.engine import KokoroEngine

        return KokoroEngine(
            spec.name,
            weights=spec.weights or None,
            device=spec.device,
            dtype=spec.compute_type,
            **spec.options,
        )
    raise ValueError(f"unknown engine {spec.engine!r} for model {spec.name!r}")
