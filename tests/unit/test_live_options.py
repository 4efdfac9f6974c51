"""The live-stream actions' fields, checked by their records: the code and a message that
names the field for each bad value; the defaults and the agent's caps otherwise."""

from __future__ import annotations

import pytest

from agents.live import options
from agents.live.session import LiveConfig
from model_manager.errors import BusError


@pytest.mark.parametrize(("fields", "code", "field"), [
    ({"sample_rate": True}, "invalid_audio", "sample_rate"),
    ({"sample_rate": 500}, "invalid_audio", "sample_rate"),
    ({"sample_rate": 16000.0}, "invalid_audio", "sample_rate"),
    ({"sample_rate": None}, "invalid_audio", "sample_rate"),
    ({"dtype": "float64"}, "invalid_audio", "dtype"),
    ({"dtype": 3}, "invalid_audio", "dtype"),
    ({"vad_threshold": 0.99}, "invalid_field", "vad_threshold"),
    ({"context_ms": -1}, "invalid_field", "context_ms"),
    ({"partial_interval_ms": True}, "invalid_field", "partial_interval_ms"),
    ({"partial_interval_ms": "fast"}, "invalid_field", "partial_interval_ms"),
    ({"end_silence_ms": float("nan")}, "invalid_field", "end_silence_ms"),
    ({"end_silence_ms": 10**400}, "invalid_field", "end_silence_ms"),
])
def test_a_bad_stream_field_is_refused_by_name(fields, code, field):
    with pytest.raises(BusError) as refused:
        options.stream_open(fields)
    assert refused.value.code == code
    assert str(refused.value.message).startswith(f"{field} must be")


def test_the_first_bad_field_in_the_records_order_is_the_error():
    with pytest.raises(BusError) as refused:
        options.stream_open({"context_ms": -1, "sample_rate": 1})
    assert refused.value.code == "invalid_audio"


def test_stream_options_override_the_agents_settings_and_absent_ones_keep_them():
    base = LiveConfig()
    assert options.session_config(options.stream_open({}), base) is base
    opened = options.stream_open({"sample_rate": 24000, "dtype": "int16", "partial_interval_ms": 300,
                                  "end_silence_ms": 800, "vad_threshold": 0.4, "context_ms": 0})
    assert (opened.sample_rate, opened.dtype) == (24000, "int16")
    config = options.session_config(opened, base)
    assert config.decode_interval_s == pytest.approx(0.3)
    assert config.endpoint.min_silence_s == pytest.approx(0.8)
    assert config.endpoint.threshold == pytest.approx(0.4)
    assert config.context_s == 0


@pytest.mark.parametrize("value", [-1, True, None, "1", float("inf")])
def test_next_event_refuses_a_bad_timeout(value):
    with pytest.raises(BusError) as refused:
        options.wait_ms({"timeout_ms": value}, 30_000)
    assert refused.value.code == "invalid_field" and "timeout_ms" in str(refused.value)


def test_next_event_waits_a_second_by_default_and_never_past_the_cap():
    assert options.wait_ms({}, 30_000) == 1000
    assert options.wait_ms({"timeout_ms": 0}, 30_000) == 0
    assert options.wait_ms({"timeout_ms": 5e9}, 30_000) == 30_000
