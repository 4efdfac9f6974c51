"""CurveZMQ with a ZAP allow-list: authorized clients are served, anyone else gets nothing.

A CURVE-enabled STT agent runs as its own process, with a model manager of its own (only
Whisper tiny.en), so an authorized client gets real transcriptions.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq
from conftest import ROOT, free_port
from speech import SENTENCES, speak, word_error_rate

from agents import security
from agents.keys import main as keys_main
from agents.launcher import probe_client
from agents.model_client import ClientConfig, ModelClient
from model_manager.config import ConfigError, parse_config


@dataclass
class SecureAgent:
    address: str
    keys: Path
    process: subprocess.Popen
    supervisor: ModelClient  # the launcher's probe client, with its ephemeral key


def client(agent: SecureAgent, name: str | None = "client", **settings: object) -> ModelClient:
    """A client with the bus's public key and the key pair of `name` (None: plaintext)."""
    keys = {}
    if name is not None:
        keys = {
            "server_public_key": str(agent.keys / "server.key"),
            "client_secret_key_file": str(agent.keys / "clients" / f"{name}.key_secret"),
        }
    config = ClientConfig(stt_address=agent.address, timeout_s=20, connect_timeout_s=2, retries=0)
    for key, value in {**keys, **settings}.items():
        setattr(config, key, value)
    return ModelClient(config)


@pytest.fixture(scope="module")
def secure_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureAgent]:
    keys = tmp_path_factory.mktemp("keys")
    assert keys_main([str(keys), "--client", "client", "--client", "stranger"]) == 0
    # "stranger" has a key pair but is not on the allow-list.
    (keys / "authorized_clients" / "stranger.key").unlink()
    port, backend_port = free_port(), free_port()
    section = {
        "curve_enabled": True,
        "server_secret_key_file": str(keys / "server.key_secret"),
        "authorized_clients_dir": str(keys / "authorized_clients"),
    }
    saved = os.environ.get(security.SUPERVISOR_KEY_ENV)
    supervisor = probe_client(parse_config({"security": section}))  # sets the key for the child
    env = {
        **os.environ,
        **{
            f"VOICEBUS__SECURITY__{k.upper()}": str(v).lower() if v is True else str(v)
            for k, v in section.items()
        },
        "VOICEBUS__ENDPOINTS__STT_PORT": str(port),
        "VOICEBUS__ENDPOINTS__STT_BACKEND_PORT": str(backend_port),
        "VOICEBUS__ENDPOINTS__STT_METRICS_PORT": "0",
        "VOICEBUS__ENDPOINTS__METRICS_PORT": "0",
        "VOICEBUS__BATCH_PROCESSING_CONFIG__WARMUP": "false",
        "VOICEBUS__ENDPOINTS__MONITOR_PORT": "0",
        "VOICEBUS__LIMITS__JOURNAL_DIR": str(keys.parent / "secure-journal"),
    }
    if saved is None:
        os.environ.pop(security.SUPERVISOR_KEY_ENV)
    else:
        os.environ[security.SUPERVISOR_KEY_ENV] = saved
    process = subprocess.Popen([sys.executable, "-m", "agents.service_agent", "stt"], cwd=ROOT, env=env)
    # Its own model manager: the client side's CURVE is the agent's business, not the backend's.
    manager = subprocess.Popen([sys.executable, "-m", "model_manager", "--models", "whisper-tiny.en",
                                "--agents", f"tcp://127.0.0.1:{backend_port}"], cwd=ROOT, env=env)
    agent = SecureAgent(f"tcp://127.0.0.1:{port}", keys, process, supervisor)
    try:
        deadline = time.monotonic() + 60
        while not supervisor.request(agent.address, {"action": "health"}, timeout_s=1).get("ready"):
            assert process.poll() is None, "the secure agent exited"
            assert time.monotonic() < deadline, "the secure agent did not become ready"
            time.sleep(0.3)
        yield agent
    finally:
        for child in (process, manager):
            child.send_signal(signal.SIGTERM)
        for child in (process, manager):
            child.wait(60)


def test_the_keys_command_never_overwrites_a_key(tmp_path, capsys):
    assert keys_main([str(tmp_path)]) == 0
    assert "curve_enabled: true" in capsys.readouterr().out
    secret = (tmp_path / "server.key_secret").read_bytes()
    assert keys_main([str(tmp_path)]) == 1  # "client" exists
    assert (tmp_path / "server.key_secret").read_bytes() == secret
    assert (tmp_path / "server.key_secret").stat().st_mode & 0o077 == 0
    assert keys_main([str(tmp_path), "--client", "second"]) == 0
    assert sorted(p.name for p in (tmp_path / "authorized_clients").iterdir()) == ["client.key", "second.key"]


def test_an_authorized_client_is_served(secure_agent):
    audio = speak(SENTENCES[2])
    reply = client(secure_agent).generate(audio_data=audio, sample_rate=16000)
    assert reply["status"] == "success", reply
    assert word_error_rate(SENTENCES[2], reply["results"][0]["text"]) < 0.5


def test_the_launchers_probe_is_let_in_with_its_ephemeral_key(secure_agent):
    assert secure_agent.supervisor.request(secure_agent.address, {"action": "health"})["ready"] is True


def test_an_unknown_key_gets_no_service(secure_agent):
    reply = client(secure_agent, "stranger").request(secure_agent.address, {"action": "health"}, timeout_s=2)
    assert reply["status"] == "error" and reply["error"]["code"] == "no_reply"


def test_a_plaintext_client_gets_no_service(secure_agent):
    reply = client(secure_agent, None).request(secure_agent.address, {"action": "health"}, timeout_s=2)
    assert reply["error"]["code"] == "no_reply"
    raw = zmq.Context.instance().socket(zmq.REQ)  # nor does a bare zmq socket
    raw.setsockopt(zmq.LINGER, 0)
    try:
        raw.connect(secure_agent.address)
        raw.send_json({"action": "health"})
        assert not raw.poll(2000)
    finally:
        raw.close()


def test_keys_added_to_or_removed_from_the_allow_list_count_without_a_restart(secure_agent):
    assert keys_main([str(secure_agent.keys), "--client", "latecomer"]) == 0
    time.sleep(security.RELOAD_INTERVAL_S)  # the allow-list is re-read at most this often
    latecomer = client(secure_agent, "latecomer")
    assert latecomer.request(secure_agent.address, {"action": "health"}, timeout_s=5)["status"] == "success"
    (secure_agent.keys / "authorized_clients" / "latecomer.key").unlink()
    time.sleep(security.RELOAD_INTERVAL_S)
    reply = latecomer.request(secure_agent.address, {"action": "health"}, timeout_s=2)
    assert reply["error"]["code"] == "no_reply"


def test_half_a_curve_configuration_is_refused(secure_agent):
    with pytest.raises(ValueError, match="needs both"):
        ModelClient(ClientConfig(server_public_key=str(secure_agent.keys / "server.key")))


def test_curve_without_keys_is_a_configuration_error(tmp_path):
    with pytest.raises(ConfigError, match="security.server_secret_key_file"):
        parse_config({"security": {"curve_enabled": True, "authorized_clients_dir": str(tmp_path)}})
    env = {
        **os.environ,
        "VOICEBUS__SECURITY__CURVE_ENABLED": "true",
        "VOICEBUS__SECURITY__SERVER_SECRET_KEY_FILE": str(tmp_path / "missing.key_secret"),
        "VOICEBUS__SECURITY__AUTHORIZED_CLIENTS_DIR": str(tmp_path),
        "VOICEBUS__ENDPOINTS__STT_PORT": str(free_port()),
        "VOICEBUS__LIMITS__JOURNAL_DIR": str(tmp_path / "journal"),
    }
    agent = subprocess.run(
        [sys.executable, "-m", "agents.service_agent", "stt"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert agent.returncode == 2
    assert b"security.server_secret_key_file" in agent.stderr
