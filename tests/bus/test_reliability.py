"""Nothing lost: limits answered over real sockets, a frozen model manager reported at once,
killed agents restarted by the launcher with none of their queued jobs lost.

All on `fragile_bus` (small limits, its processes frozen and killed); each test leaves it
serving again.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import zmq
from conftest import queue_held
from speech import SENTENCES, speak, word_error_rate

MIB = 1024 * 1024
TTS_TEXTS = ["Hi.", "Yes.", "Thanks.", "Good night."]  # short: TTS is slow on a CPU


def child_process(launcher_pid: int, marker: str) -> psutil.Process:
    """The launcher's child whose command line contains `marker`."""
    for child in psutil.Process(launcher_pid).children():
        if marker in " ".join(child.cmdline()):
            return child
    raise AssertionError(f"no {marker} process")


def agent_marker(task: str) -> str:
    return f"agents.service_agent {task}"


def wait_ready(bus, address: str, timeout_s: float) -> float:
    """Seconds until `health` on `address` says ready; fails after `timeout_s`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            if bus.request({"action": "health"}, address=address, timeout_s=1).get("ready"):
                return time.monotonic() - started
        except AssertionError:  # no reply yet: the process is starting
            pass
        time.sleep(0.2)
    raise AssertionError(f"{address} not ready within {timeout_s} s")


def no_reply(address: str, frame: bytes, timeout_s: float) -> bool:
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    try:
        sock.send(frame)
        return not sock.poll(int(timeout_s * 1000))
    finally:
        sock.close()


# --- limits -----------------------------------------------------------------------------------


def test_an_oversized_request_gets_message_too_large_in_its_own_encoding(fragile_bus):
    audio = np.zeros(int(1.2 * MIB / 4), "<f4").tobytes()  # over the bus's 1 MiB limit
    request = {"action": "transcribe", "audio_data": audio, "dtype": "float32"}
    reply = fragile_bus.request(request, encoding="msgpack", timeout_s=30)
    assert reply["status"] == "error" and reply["error"]["code"] == "message_too_large", reply
    assert str(MIB) in reply["error"]["message"]
    json_reply = fragile_bus.request(b'{"action": "health", "pad": "' + b"x" * MIB + b'"}', timeout_s=30)
    assert json_reply["error"]["code"] == "message_too_large"


def test_a_frame_beyond_twice_the_limit_is_cut_off_and_the_agent_serves_on(fragile_bus):
    assert no_reply(fragile_bus.stt_address, b"\x00" * (2 * MIB + 1), timeout_s=3)
    assert fragile_bus.request({"action": "health"}, timeout_s=10)["ready"] is True


def test_a_full_queue_answers_overloaded_and_the_rest_succeed(fragile_bus):
    # 32 items against a queue of 8: the ones that do not fit are refused at once, not dropped.
    silence = np.zeros(4000, "<f4").tobytes()  # 32 x 16 KB: under the 1 MiB message limit
    # vad off: silence would otherwise be answered as empty text without ever being queued.
    items = [{"audio_data": silence, "dtype": "float32", "request_id": i, "vad": False} for i in range(32)]
    reply = fragile_bus.request(
        {"action": "batch_transcribe", "batch_data": items}, encoding="msgpack", timeout_s=120
    )
    assert reply["status"] == "success"
    outcomes = [r["status"] if r["status"] == "success" else r["error"]["code"] for r in reply["results"]]
    assert set(outcomes) == {"success", "overloaded"}, outcomes
    refused = next(r for r in reply["results"] if r["status"] == "error")
    assert "queue is full" in refused["error"]["message"]


def test_queued_jobs_beyond_the_queue_size_wait_their_turn_instead_of_failing(fragile_bus):
    # The agent owns the retries of queue_for_batch jobs: their clients hold only a request_id.
    silence = np.zeros(4000, "<f4").tobytes()
    ids = [f"patient-{i}" for i in range(14)]  # against a queue of 8
    for request_id in ids:
        request = {
            "action": "queue_for_batch",
            "audio_data": silence,
            "dtype": "float32",
            "request_id": request_id,
        }
        assert fragile_bus.request(request, encoding="msgpack")["status"] == "queued"
    deadline = time.monotonic() + 120
    for request_id in ids:
        while (reply := fragile_bus.request({"action": "get_result", "request_id": request_id}))[
            "status"
        ] == "pending":
            assert time.monotonic() < deadline, request_id
            time.sleep(0.2)
        assert reply["status"] == "success", reply


# --- heartbeats -------------------------------------------------------------------------------


def test_a_frozen_model_manager_is_reported_down_and_nothing_in_flight_is_lost(fragile_bus):
    bus = fragile_bus
    manager = child_process(bus.process.pid, "model_manager")
    in_flight: dict = {}
    audio = speak(SENTENCES[3]).tobytes()
    request = {"action": "transcribe", "audio_data": audio, "dtype": "float32", "request_id": "frozen"}
    manager.suspend()  # SIGSTOP: alive to the OS, silent on the bus
    try:
        frozen_at = time.monotonic()
        client = threading.Thread(
            target=lambda: in_flight.update(bus.request(request, encoding="msgpack", timeout_s=60))
        )
        client.start()  # accepted: the agent has not noticed yet
        while True:
            health = bus.request({"action": "health"}, timeout_s=1)  # answers, never times out
            if health["model_manager"] == "down":
                break
            assert time.monotonic() - frozen_at < 6, health
            time.sleep(0.2)
        assert health["ready"] is False
        # New work waits for a model manager (limits.model_wait_ms), within its own timeout,
        # then is refused: no manager holding the model came.
        asked = time.monotonic()
        refused = bus.request({"action": "transcribe", "audio_data": [0.0] * 1600, "timeout_ms": 1000},
                              timeout_s=5)
        assert refused["error"]["code"] == "model_unavailable"
        assert time.monotonic() - asked < 3
    finally:
        manager.resume()
    wait_ready(bus, bus.stt_address, timeout_s=15)
    client.join(60)
    assert in_flight.get("status") == "success", in_flight
    assert word_error_rate(SENTENCES[3], in_flight["text"]) < 0.5


# --- supervision and the journal --------------------------------------------------------------


def queue(bus, address: str, task: str, request_id: str, index: int) -> None:
    if task == "stt":
        item = {"audio_data": speak(SENTENCES[index]).tobytes(), "dtype": "float32", "language": "en"}
    else:
        item = {"text": TTS_TEXTS[index % len(TTS_TEXTS)], "format": "pcm"}
    reply = bus.request(
        {"action": "queue_for_batch", "request_id": request_id, **item}, address=address, encoding="msgpack"
    )
    assert reply == {"status": "queued", "request_id": request_id}


def finished_in_journal(journal: Path, request_id: str) -> bool:
    with sqlite3.connect(journal) as db:
        row = db.execute(
            "SELECT reply IS NOT NULL FROM results WHERE request_id = ?", (request_id,)
        ).fetchone()
    return bool(row and row[0])


@pytest.mark.parametrize("task", ["stt", "tts"])
def test_a_killed_agent_is_restarted_and_loses_no_queued_job(fragile_bus, task):
    bus = fragile_bus
    address = bus.stt_address if task == "stt" else bus.tts_address
    journal = bus.journal_dir / f"{task}-{address.rsplit(':', 1)[1]}.sqlite3"
    # A result finished before the kill must still be fetchable after it.
    queue(bus, address, task, f"{task}-done", 0)
    deadline = time.monotonic() + 60
    while not finished_in_journal(journal, f"{task}-done"):
        assert time.monotonic() < deadline, "the first job did not finish"
        time.sleep(0.1)
    # These are acknowledged ("queued") and still queued when the agent dies: held in the
    # model manager's queue (fewer than a batch) until its successor is serving, however fast
    # this machine would have run them.
    in_flight = [f"{task}-{i}" for i in range(1, 7 if task == "stt" else 3)]
    with queue_held(bus, address, seconds=120):
        for i, request_id in enumerate(in_flight, start=1):
            queue(bus, address, task, request_id, i)
        victim = child_process(bus.process.pid, agent_marker(task))
        victim.kill()  # SIGKILL: no chance to save anything
        restart_s = wait_ready(bus, address, timeout_s=30)
        assert child_process(bus.process.pid, agent_marker(task)).pid != victim.pid
        print(f"\n{task} agent killed: serving again after {restart_s:.1f} s")
        assert restart_s < 20
    results = {}
    deadline = time.monotonic() + 90
    for request_id in [f"{task}-done", *in_flight]:
        while True:
            reply = bus.request({"action": "get_result", "request_id": request_id}, address=address)
            if reply["status"] != "pending":
                results[request_id] = reply
                break
            assert time.monotonic() < deadline, f"{request_id} still pending"
            time.sleep(0.2)
    for index, (request_id, reply) in enumerate(results.items()):
        assert reply["status"] == "success", (request_id, reply)
        if task == "stt":
            assert word_error_rate(SENTENCES[index], reply["text"]) < 0.5, reply
        else:
            assert len(reply["audio"]) > 0 and reply["format"] == "pcm"
    assert "journal: resuming" in bus.log_path.read_text()
    # The model manager drops the dead agent's queued copies once the new agent tells it that
    # it does not know it (or once it has missed its liveness window), and registers again.
    deadline = time.monotonic() + 15
    while not any(sign in bus.log_path.read_text() for sign in ("does not know this model manager",
                                                                "is silent; registering again")):
        assert time.monotonic() < deadline, "the model manager never noticed the dead agent"
        time.sleep(0.2)
