"""Only our own model managers get in: the backend's CurveZMQ allow-list, with real
processes (an agents-only launcher and two model managers) on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import zmq
from conftest import ROOT, free_port, wait_until
from speech import speak

from agents.keys import make_keys


def model_managers(url: str) -> float:
    try:
        text = urllib.request.urlopen(url, timeout=2).read().decode()
    except OSError:
        return -1
    series = 'voicebus_model_managers{model="whisper-tiny.en"}'
    found = next(line for line in text.splitlines() if line.startswith(series))
    return float(found.rsplit(" ", 1)[1])


def test_a_model_manager_without_an_allowed_key_gets_no_work(tmp_path: Path):
    keys = tmp_path / "keys"
    make_keys(keys, [], ["allowed"])
    make_keys(tmp_path / "other", [], ["stranger"])  # a valid pair the agents never listed
    ports = {name: free_port() for name in ("STT_PORT", "TTS_PORT", "STT_BACKEND_PORT", "TTS_BACKEND_PORT",
                                            "STT_METRICS_PORT", "TTS_METRICS_PORT", "METRICS_PORT")}
    env = {
        **os.environ,
        **{f"VOICEBUS__ENDPOINTS__{k}": str(v) for k, v in ports.items()},
        "VOICEBUS__ENDPOINTS__HTTP_PORT": "0", "VOICEBUS__ENDPOINTS__MONITOR_PORT": "0",
        "VOICEBUS__MODELS__TTS": "[]",
        "VOICEBUS__LIMITS__JOURNAL_DIR": str(tmp_path / "journal"),
        "VOICEBUS__BATCH_PROCESSING_CONFIG__WARMUP": "false",
        "VOICEBUS__SECURITY__BACKEND_CURVE_ENABLED": "true",
        "VOICEBUS__SECURITY__SERVER_SECRET_KEY_FILE": str(keys / "server.key_secret"),
        "VOICEBUS__SECURITY__AUTHORIZED_MODEL_MANAGERS_DIR": str(keys / "authorized_model_managers"),
        "VOICEBUS__SECURITY__SERVER_PUBLIC_KEY_FILE": str(keys / "server.key"),
    }
    metrics = f"http://127.0.0.1:{ports['STT_METRICS_PORT']}/metrics"
    agents_log, stranger_log, allowed_log = (tmp_path / f"{n}.log" for n in ("agents", "stranger", "allowed"))
    processes = []

    def start(argv: list[str], log: Path, extra: dict[str, str]) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env={**env, **extra},
                                   stdout=open(log, "w"), stderr=subprocess.STDOUT)  # noqa: SIM115
        processes.append(process)
        return process

    manager = ["-m", "model_manager", "--models", "whisper-tiny.en"]
    try:
        start(["-m", "agents.launcher", "--role", "agents"], agents_log, {})
        start(manager, stranger_log, {
            "VOICEBUS__SECURITY__MODEL_MANAGER_SECRET_KEY_FILE": str(tmp_path / "other/model_managers/"
                                                                     "stranger.key_secret"),
            "VOICEBUS__ENDPOINTS__METRICS_PORT": str(free_port())})
        wait_until(lambda: "loaded whisper-tiny.en" in stranger_log.read_text(), 120, "the stranger loaded")
        wait_until(lambda: model_managers(metrics) == 0, 60, "the agent's exporter up")
        assert "registered" not in agents_log.read_text()
        allowed = keys / "model_managers" / "allowed.key_secret"
        start(manager, allowed_log, {"VOICEBUS__SECURITY__MODEL_MANAGER_SECRET_KEY_FILE": str(allowed)})
        wait_until(lambda: model_managers(metrics) == 1, 120, "the allowed model manager registered")
        sock = zmq.Context.instance().socket(zmq.REQ)
        sock.connect(f"tcp://127.0.0.1:{ports['STT_PORT']}")
        sock.send_json({"action": "transcribe", "audio_data": speak("Hello there.").tolist()})
        assert sock.poll(60_000)
        assert sock.recv_json()["status"] == "success"
        sock.close(linger=0)
        assert model_managers(metrics) == 1  # the stranger never got in
        assert "refused a client with an unknown CURVE key" in agents_log.read_text()
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
