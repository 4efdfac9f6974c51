"""The gateway's pure pieces: names, transcript formats, error mapping, keys, and the
benchmark report's HTTP section."""

from __future__ import annotations

import asyncio
import sys
import types

import numpy as np
import pytest
from conftest import ROOT

from agents.gateway import wyoming
from agents.gateway.auth import authorized, load_api_keys
from agents.gateway.errors import ApiError
from agents.gateway.names import Names
from agents.gateway.transcripts import clock, render, text_deltas
from model_manager.config import ConfigError, GatewayConfig, Limits

sys.path.insert(0, str(ROOT / "scripts"))
from bench import report as bench_report  # noqa: E402


def test_openai_names_map_to_the_bus():
    names = Names({"whisper-1": "", "tts-1": "", "big": "quality"}, {"alloy": "jf_alpha", "echo": "jm_kumo"},
                  "quality")
    assert names.model_pref("whisper-1") is None and names.model_pref("WHISPER-1") is None
    assert names.model_pref("big") == "quality" and names.model_pref("whisper-base") == "whisper-base"
    assert names.model_pref("whisper-1", translation=True) == "quality"
    assert names.model_pref(None, translation=True) == "quality" and names.model_pref(None) is None
    assert names.voice("alloy") == "jf_alpha" and names.voice("jm_kumo") == "jm_kumo"
    assert names.voice("Alloy(2)+echo(1)") == "jf_alpha(2)+jm_kumo(1)"
    assert names.voice(None) is None


def test_transcript_formats():
    reply = {"text": "Hello there. Bye.", "language": "en",
             "segments": [{"id": 0, "start": 0.0, "end": 1.5, "text": "Hello there."},
                          {"id": 1, "start": 3661.25, "end": 3662.0, "text": "Bye."}],
             "words": [{"start": 0.0, "end": 0.4, "word": " Hello", "probability": 0.9}]}
    assert clock(3661.25, ",") == "01:01:01,250"
    srt, media = render(reply, "srt", "transcribe", 3662.0, set())
    assert media == "application/x-subrip"
    assert srt == "1\n00:00:00,000 --> 00:00:01,500\nHello there.\n\n2\n01:01:01,250 --> 01:01:02,000\nBye.\n"
    vtt, _ = render(reply, "vtt", "transcribe", 3662.0, set())
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello there.\n")
    verbose, _ = render(reply, "verbose_json", "transcribe", 3662.0, {"word"})
    assert verbose["language"] == "english" and "segments" not in verbose
    assert verbose["words"] == [{"word": "Hello", "start": 0.0, "end": 0.4, "probability": 0.9}]
    both, _ = render(reply, "verbose_json", "translate", 3662.0, {"word", "segment"})
    assert both["task"] == "translate" and len(both["segments"]) == 2 and both["words"]
    assert render(reply, "text", "transcribe", 1.0, set()) == ("Hello there. Bye.\n", "text/plain")
    assert text_deltas(reply) == ["Hello there.", " Bye."]
    odd = {"text": "A b. C d.", "segments": [{"text": " A b."}, {"text": "missing"}, {"text": ""}]}
    assert text_deltas(odd) == ["A b.", " C d."] and text_deltas({"text": "x"}) == ["x"]


@pytest.mark.parametrize(("code", "status"), [
    ("invalid_audio", 400), ("unknown_voice", 400), ("unknown_model", 404), ("audio_too_long", 413),
    ("overloaded", 429), ("model_unavailable", 503), ("timeout", 504), ("inference_failed", 500),
    ("something_new", 500)])
def test_bus_codes_become_http_statuses(code, status):
    error = ApiError.from_bus({"code": code, "message": "m", "retry_after_ms": 2500})
    assert error.status == status and error.body()["error"]["code"] == code
    if code == "overloaded":
        assert error.headers["Retry-After"] == "3"
    if status == 503:
        assert int(error.headers["Retry-After"]) >= 1


def test_api_keys(tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text("# team keys\nalpha\n\n  beta  \n")
    settings = GatewayConfig(api_keys_file=str(keys_file), api_keys_env="KEYS")
    keys = load_api_keys(settings, {"KEYS": "gamma, ,delta"})
    assert keys == {"alpha", "beta", "gamma", "delta"}
    assert authorized("Bearer beta", keys) and authorized("bearer gamma", keys)
    assert not authorized("Bearer nope", keys) and not authorized(None, keys) and not authorized("beta", keys)
    assert authorized(None, frozenset())  # no keys configured: open
    with pytest.raises(ConfigError, match="api_keys_file"):
        load_api_keys(GatewayConfig(api_keys_file=str(tmp_path / "missing")), {})


def test_benchmark_http_section():
    row = {"clients": 8, "throughput_rps": 2.0, "p99_ms": 900.0}
    entry = {"clients": 8, "zeromq": row, "http": {**row, "throughput_rps": 1.9}, "throughput_ratio": 0.95,
             "p99_ratio": 1.02, "rounds": [{"ratio": 0.9}, {"ratio": 1.0}]}
    assert bench_report.http_problems({"stt": entry}, ["stt"]) == []
    assert bench_report.http_problems({"skipped": "--no-http was given"}, ["stt"]) == []
    assert bench_report.http_problems({"stt": {**entry, "throughput_ratio": None}}, ["stt"]) == [
        "http.stt.throughput_ratio: must be a positive number, got None"]
    assert bench_report.http_problems({}, ["tts"]) == ["http.tts: missing"]
    table = bench_report.http_table({"stt": entry})
    assert "0.95" in table and "0.90, 1.00" in table


def test_a_taken_http_port_leaves_the_gateway_out():
    import socket

    from agents.launcher import plan_children, without_taken_http_port
    from model_manager.config import parse_config

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        config = parse_config({"endpoints": {"http_port": port}, "models": {"stt": [
            {"name": "m", "engine": "ctranslate2"}]}})
        assert [c.name for c in plan_children(config)] == ["stt-agent", "gateway", "model-manager"]
        left_out = without_taken_http_port(config)
        assert left_out.endpoints.http_port == 0
        assert [c.name for c in plan_children(left_out)] == ["stt-agent", "model-manager"]
    assert without_taken_http_port(config) is config  # free again


# --- Wyoming streaming synthesis: how many sentences it keeps at the bus ---------------------


class Connection:
    """A Wyoming connection as TextStream sees it, on a stand-in `bus`: what it would write
    (each chunk's text, each event's type) goes to `written`."""

    speech_message = wyoming.WyomingHandler.speech_message

    def __init__(self, bus: object, written: list[str]) -> None:
        self.gateway = types.SimpleNamespace(bus=bus, names=types.SimpleNamespace(voice=lambda name: name),
                                             config=types.SimpleNamespace(limits=Limits()))
        self.written = written

    async def write_audio(self, chunk: dict, started: bool) -> None:
        self.written.append(chunk["text"])

    async def write_event(self, event) -> None:
        self.written.append(event.type)


def test_a_streaming_synthesis_keeps_a_few_sentences_ahead_and_writes_them_in_order():
    in_flight, most = 0, 0
    written: list[str] = []

    class Bus:
        def check_ready(self, task: str) -> None:
            pass

        async def stream(self, message):
            nonlocal in_flight, most
            in_flight += 1
            most = max(most, in_flight)
            await asyncio.sleep(0.01 if message["text"] != "One." else 0.05)  # the first is slowest
            in_flight -= 1
            yield {"status": "success", "sample_rate": 24000, "audio": np.zeros(4, np.float32),
                   "text": message["text"]}

    async def scenario() -> None:
        stream = wyoming.TextStream(Connection(Bus(), written))  # type: ignore[arg-type]
        stream.start(None)
        words = "One. Two. Three. Four. Five. Six. Seven. Eight. Nine. Ten."
        stream.add(words)
        await stream.finish()

    asyncio.run(scenario())
    assert most == wyoming.SENTENCES_AHEAD
    assert written == "One. Two. Three. Four. Five. Six. Seven. Eight. Nine. Ten.".split() + ["audio-stop"]


def test_a_streaming_synthesis_refused_at_its_start_sends_nothing_and_still_finishes():
    from model_manager.errors import MODEL_UNAVAILABLE, BusError

    calls: list[str] = []

    class Bus:
        def check_ready(self, task: str) -> None:
            raise BusError(MODEL_UNAVAILABLE, "tts is loading")

        async def stream(self, message):  # pragma: no cover - must not be called
            calls.append(message["text"])
            yield {}

    async def scenario() -> None:
        stream = wyoming.TextStream(Connection(Bus(), calls))  # type: ignore[arg-type]
        with pytest.raises(BusError):
            stream.start("alloy")  # the caller sends its error event
        stream.add("Hello there. How are you? ")
        await asyncio.wait_for(stream.finish(), 5)

    asyncio.run(scenario())
    assert calls == []
