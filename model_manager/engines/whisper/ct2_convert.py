"""Convert a CTranslate2 Whisper directory (model.bin, config.json, tokenizer.json) into a
transformers `WhisperForConditionalGeneration` directory, offline.

    python -m model_manager.engines.whisper.ct2_convert SRC DST [--dtype float32|float16|bfloat16]
                                                        [--overwrite]

The conversion is strict, so a layout it does not understand fails loudly instead of
producing a model that silently transcribes garbage:
- every variable of model.bin is used exactly once (or is a checked scalar setting);
- every parameter of the transformers model is assigned (none left at random init);
- the output projection is tied to the token embeddings, as transformers' Whisper expects;
- CTranslate2 fuses q/k/v with one bias vector, transformers has no k bias: it must be zero.
int8-quantised models are dequantised with their per-row scales.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tokenizers
import torch

from model_manager.engines.whisper.ct2_format import CT2Model, read_ct2_model
from model_manager.engines.whisper.tokens import WhisperTokens

if TYPE_CHECKING:  # transformers takes seconds to import; only the functions below need it
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )

# ctranslate2 ActivationType (include/ctranslate2/ops/activation.h): GELU is 3.
_CT2_GELU = 3
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Scalar settings the transformers Whisper architecture fixes; any other value means a model
# this converter cannot represent.
_EXPECTED_SCALARS = {"decoder/activation": _CT2_GELU, "decoder/alibi": 0, "decoder/pre_norm": 1,
                     "decoder/start_from_zero_embedding": 0}
# Alignment heads for word timestamps live in config.json too; the scalars are bookkeeping.
_IGNORED_SCALARS = ("decoder/alignment_heads", "decoder/alignment_layer")
_TIED = ("decoder/projection/weight", "decoder/embeddings/weight")


class ConversionError(ValueError):
    """The source is not a CTranslate2 Whisper model this converter can represent exactly."""


class _Variables:
    """model.bin variables as float32 tensors, recording which ones the mapping consumed."""

    def __init__(self, model: CT2Model) -> None:
        self.model = model
        self.used: set[str] = set()

    def tensor(self, name: str) -> torch.Tensor:
        var = self.model.variables.get(name)
        if var is None:
            raise ConversionError(f"model.bin has no variable {name}")
        self.used.add(name)
        data = self.model.array(name)
        if var.dtype == "int8":
            # CTranslate2 stores round(w * scale) with one scale per output row.
            scale = self.tensor(f"{name}_scale").numpy()
            data = data.astype(np.float32) / scale.reshape((-1,) + (1,) * (data.ndim - 1))
        elif var.dtype not in ("float32", "float16", "bfloat16"):
            raise ConversionError(f"{name}: cannot convert dtype {var.dtype}")
        return torch.from_numpy(np.array(data, dtype=np.float32))

    def scalar(self, name: str) -> int:
        if name not in self.model.variables:
            raise ConversionError(f"model.bin has no variable {name}")
        self.used.add(name)
        return int(self.model.scalar(name))

    def unused(self) -> list[str]:
        return sorted(set(self.model.variables) - self.used)


def _layer_count(model: CT2Model, stack: str) -> int:
    prefix = f"{stack}/layer_"
    indices = {int(n[len(prefix):].split("/")[0]) for n in model.variables
               if n.startswith(prefix) and n[len(prefix):].split("/")[0].isdigit()}
    if not indices or indices != set(range(len(indices))):
        raise ConversionError(f"{stack} layers are not numbered 0..N-1: {sorted(indices)}")
    return len(indices)


def whisper_state_dict(model: CT2Model) -> dict[str, torch.Tensor]:
    """transformers state dict (float32) of a CTranslate2 WhisperSpec, without proj_out.weight
    (tied to model.decoder.embed_tokens.weight). Raises ConversionError on any mismatch."""
    if model.spec != "WhisperSpec":
        raise ConversionError(f"not a Whisper model: spec {model.spec!r}")
    if model.aliases != {_TIED[0]: _TIED[1]}:
        raise ConversionError(f"expected the output projection tied to the embeddings, got aliases "
                              f"{model.aliases}")
    v = _Variables(model)
    for name, expected in _EXPECTED_SCALARS.items():
        if (value := v.scalar(name)) != expected:
            raise ConversionError(f"{name} = {value}, only {expected} is supported")
    for name in _IGNORED_SCALARS:
        v.scalar(name)
    # Read here so they count as used; whisper_config reads the values again.
    for name in ("encoder/num_heads", "decoder/num_heads", "decoder/scale_embeddings"):
        v.scalar(name)

    sd: dict[str, torch.Tensor] = {}

    def linear(dst: str, src: str) -> None:
        sd[f"{dst}.weight"] = v.tensor(f"{src}/weight")
        sd[f"{dst}.bias"] = v.tensor(f"{src}/bias")

    def norm(dst: str, src: str) -> None:
        sd[f"{dst}.weight"] = v.tensor(f"{src}/gamma")
        sd[f"{dst}.bias"] = v.tensor(f"{src}/beta")

    def fused(dsts: Sequence[str], src: str) -> None:
        # [q; k; v] (self-attention) or [k; v] (cross-attention) stacked along the output rows.
        weights = torch.chunk(v.tensor(f"{src}/weight"), len(dsts))
        biases = torch.chunk(v.tensor(f"{src}/bias"), len(dsts))
        for dst, w, b in zip(dsts, weights, biases, strict=True):
            sd[f"{dst}.weight"] = w.clone()
            if dst.endswith("k_proj"):
                if torch.count_nonzero(b):
                    raise ConversionError(f"{src}: the k bias is not zero; transformers has none")
            else:
                sd[f"{dst}.bias"] = b.clone()

    def attention_block(dst: str, src: str, cross: bool) -> None:
        if cross:
            linear(f"{dst}.q_proj", f"{src}/linear_0")
            fused([f"{dst}.k_proj", f"{dst}.v_proj"], f"{src}/linear_1")
            linear(f"{dst}.out_proj", f"{src}/linear_2")
        else:
            fused([f"{dst}.q_proj", f"{dst}.k_proj", f"{dst}.v_proj"], f"{src}/linear_0")
            linear(f"{dst}.out_proj", f"{src}/linear_1")

    def ffn(dst: str, src: str) -> None:
        linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
        linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
        norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")

    enc, dec = "model.encoder", "model.decoder"
    linear(f"{enc}.conv1", "encoder/conv1")
    linear(f"{enc}.conv2", "encoder/conv2")
    sd[f"{enc}.embed_positions.weight"] = v.tensor("encoder/position_encodings/encodings")
    for i in range(_layer_count(model, "encoder")):
        src, dst = f"encoder/layer_{i}", f"{enc}.layers.{i}"
        attention_block(f"{dst}.self_attn", f"{src}/self_attention", cross=False)
        norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        ffn(dst, src)
    norm(f"{enc}.layer_norm", "encoder/layer_norm")

    sd[f"{dec}.embed_tokens.weight"] = v.tensor("decoder/embeddings/weight")
    sd[f"{dec}.embed_positions.weight"] = v.tensor("decoder/position_encodings/encodings")
    for i in range(_layer_count(model, "decoder")):
        src, dst = f"decoder/layer_{i}", f"{dec}.layers.{i}"
        attention_block(f"{dst}.self_attn", f"{src}/self_attention", cross=False)
        norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        attention_block(f"{dst}.encoder_attn", f"{src}/attention", cross=True)
        norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
        ffn(dst, src)
    norm(f"{dec}.layer_norm", "decoder/layer_norm")

    if unused := v.unused():
        raise ConversionError(f"variables the mapping did not use: {unused}")
    return sd


def whisper_config(model: CT2Model, ct2_config: dict[str, Any], tokens: WhisperTokens) -> WhisperConfig:
    """The transformers WhisperConfig matching the weights' shapes and scalar settings."""
    import transformers

    var = model.variables
    vocab_size, d_model = var["decoder/embeddings/weight"].shape
    return transformers.WhisperConfig(
        vocab_size=vocab_size, num_mel_bins=var["encoder/conv1/weight"].shape[1], d_model=d_model,
        encoder_layers=_layer_count(model, "encoder"), decoder_layers=_layer_count(model, "decoder"),
        encoder_attention_heads=int(model.scalar("encoder/num_heads")),
        decoder_attention_heads=int(model.scalar("decoder/num_heads")),
        encoder_ffn_dim=var["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=var["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=var["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=var["decoder/position_encodings/encodings"].shape[0],
        scale_embedding=bool(model.scalar("decoder/scale_embeddings")), activation_function="gelu",
        bos_token_id=tokens.eot, eos_token_id=tokens.eot, pad_token_id=tokens.eot,
        decoder_start_token_id=tokens.sot, suppress_tokens=ct2_config.get("suppress_ids", []),
        begin_suppress_tokens=ct2_config.get("suppress_ids_begin", []), tie_word_embeddings=True,
    )


def _is_multilingual(vocab_size: int) -> bool:
    # The convention of openai-whisper, CTranslate2 and transformers alike: the English-only
    # vocabulary has 51864 entries, multilingual ones 51865 (large-v3: 51866).
    return vocab_size >= 51865


def whisper_generation_config(config: WhisperConfig, ct2_config: dict[str, Any],
                              tokens: WhisperTokens) -> GenerationConfig:
    """Generation settings transformers' Whisper generate needs: no timestamps by default, the
    same suppressed tokens as CTranslate2, and language/task ids for multilingual models."""
    import transformers

    multilingual = _is_multilingual(config.vocab_size)
    gen = transformers.GenerationConfig(
        decoder_start_token_id=tokens.sot, bos_token_id=tokens.eot, eos_token_id=tokens.eot,
        pad_token_id=tokens.eot, max_length=config.max_target_positions,
        suppress_tokens=ct2_config.get("suppress_ids", []),
        begin_suppress_tokens=ct2_config.get("suppress_ids_begin", []),
        alignment_heads=ct2_config.get("alignment_heads"), no_timestamps_token_id=tokens.no_timestamps,
        prev_sot_token_id=tokens.sot_prev, is_multilingual=multilingual,
        return_timestamps=False, max_initial_timestamp_index=50,
    )
    if multilingual:
        # Only set for multilingual models: transformers detects the language whenever a
        # generation config has lang_to_id and no language is given.
        gen.lang_to_id = {f"<|{code}|>": i for code, i in tokens.languages.items()}
        gen.task_to_id = {"transcribe": tokens.transcribe, "translate": tokens.translate}
    return gen


def build_model(src: str | Path, dtype: str = "float32"
                ) -> tuple[WhisperForConditionalGeneration, WhisperProcessor]:
    """(WhisperForConditionalGeneration, WhisperProcessor) built from a CTranslate2 directory."""
    import transformers

    src = Path(src)
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    for name in ("model.bin", "config.json", "tokenizer.json"):
        if not (src / name).is_file():
            raise FileNotFoundError(f"{src} is not a CTranslate2 Whisper directory: missing {name}")
    ct2 = read_ct2_model(src / "model.bin")
    ct2_config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    tokenizer = tokenizers.Tokenizer.from_file(str(src / "tokenizer.json"))
    tokens = WhisperTokens(tokenizer, _is_multilingual(ct2.variables["decoder/embeddings/weight"].shape[0]))
    state = whisper_state_dict(ct2)
    config = whisper_config(ct2, ct2_config, tokens)

    # Build on the meta device and assign the converted tensors: no time spent on random init,
    # and any parameter the state dict does not cover stays on meta, which is checked below.
    with torch.device("meta"):
        model = transformers.WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if set(missing) != {"proj_out.weight"} or unexpected:
        raise ConversionError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    if model.proj_out.weight is not model.model.decoder.embed_tokens.weight:
        raise ConversionError("proj_out is not tied to the token embeddings")
    if left := [n for n, p in model.named_parameters() if p.is_meta]:
        raise ConversionError(f"parameters left uninitialised: {left}")
    model.generation_config = whisper_generation_config(config, ct2_config, tokens)
    model = model.to(_DTYPES[dtype]).eval()

    eot = "<|endoftext|>"
    tokenizer = transformers.WhisperTokenizerFast(
        tokenizer_file=str(src / "tokenizer.json"), unk_token=eot, bos_token=eot, eos_token=eot,
        pad_token=eot, model_max_length=config.max_target_positions)
    # padding_value 0.0 mirrors the engines' log-mel padding (whisper/features.py, log_mel); the
    # engines compute their own features, this is for users of the directory alone.
    features = transformers.WhisperFeatureExtractor(
        feature_size=config.num_mel_bins, sampling_rate=16000, hop_length=160, chunk_length=30, n_fft=400,
        padding_value=0.0)
    return model, transformers.WhisperProcessor(feature_extractor=features, tokenizer=tokenizer)


def convert(src: str | Path, dst: str | Path, dtype: str = "float32", overwrite: bool = False) -> Path:
    """Write the transformers directory for CTranslate2 directory `src` to `dst` and return it.

    The directory appears whole or not at all (built next to `dst`, then renamed), so a
    cache of converted models never holds a half-written one. FileExistsError if `dst`
    exists and `overwrite` is False.
    """
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} exists (pass overwrite=True to replace it)")
    model, processor = build_model(src, dtype)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        model.save_pretrained(tmp)  # safetensors
        processor.save_pretrained(tmp)
        # mkdtemp (and safetensors' own temp files) are private; the output is meant to be shared.
        os.chmod(tmp, 0o755)
        for path in tmp.iterdir():
            os.chmod(path, 0o644)
        if dst.exists():
            shutil.rmtree(dst)
        os.rename(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model_manager.engines.whisper.ct2_convert",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("src", help="CTranslate2 Whisper directory (model.bin, config.json, tokenizer.json)")
    parser.add_argument("dst", help="output directory for transformers")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="float32")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        out = convert(args.src, args.dst, args.dtype, args.overwrite)
    except (ConversionError, FileNotFoundError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
