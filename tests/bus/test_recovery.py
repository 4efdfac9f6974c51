"""A crashed model manager is restarted by the launcher, and requests in flight still get answers."""

from __future__ import annotations

import threading
import time

import psutil
from conftest import NO_WARMUP, start_bus, stop_bus, wait_until
from speech import SENTENCES, speak, word_error_rate


def model_manager_process(launcher_pid: int) -> psutil.Process:
    for child in psutil.Process(launcher_pid).children():
        if "model_manager" in " ".join(child.cmdline()):
            return child
    raise AssertionError("no model manager process")


def test_kill_9_of_the_model_manager_loses_no_request_in_flight(tmp_path):
    one_at_a_time = {
        "VOICEBUS__BATCH_PROCESSING_CONFIG__MAX_BATCH_SIZE": "1",
        "VOICEBUS__BATCH_PROCESSING_CONFIG__MIN_BATCH_SIZE": "1",
    }
    bus = start_bus(tmp_path, {**one_at_a_time, **NO_WARMUP})
    clients = len(SENTENCES)  # one at a time: while one runs, the others wait in the queue
    replies: list[dict | None] = [None] * clients
    audio = [speak(s).tolist() for s in SENTENCES[:clients]]

    def client(i: int) -> None:
        replies[i] = bus.request(
            {"action": "transcribe", "audio_data": audio[i], "request_id": i}, timeout_s=120
        )

    try:
        victim = model_manager_process(bus.process.pid)
        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        # Killed once requests are in the model manager's queue (one runs meanwhile).
        wait_until(
            lambda: any(m["queue_depth"] for m in bus.request({"action": "stats"})["models"]),
            60,
            "requests queued in the model manager",
        )
        victim.kill()
        for t in threads:
            t.join(150)
        replacement = model_manager_process(bus.process.pid)
        assert replacement.pid != victim.pid
        # The agent learns the model manager's readiness from its next pong (once a second).
        deadline = time.monotonic() + 60
        while not (health := bus.request({"action": "health"}))["ready"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert health["ready"] is True
    finally:
        stop_bus(bus)
    for i, reply in enumerate(replies):
        assert reply is not None and reply["status"] == "success", reply
        assert word_error_rate(SENTENCES[i], reply["text"]) < 0.5
    log = bus.log_path.read_text()
    assert "restarting" in log and "resending" in log


def test_a_model_manager_killed_while_it_loads_comes_back_and_journaled_jobs_finish(tmp_path):
    """As the kernel's OOM killer might do it: before the bus was ever ready. The launcher
    restarts it (it used to stop the whole bus), and a queue_for_batch job accepted while
    the models loaded is answered."""
    bus = start_bus(tmp_path, NO_WARMUP, wait=False)
    audio = speak(SENTENCES[0]).tolist()
    try:
        deadline = time.monotonic() + 120
        health: dict = {}
        # The agent serves; the model manager loads, so none has registered yet.
        while time.monotonic() < deadline and health.get("model_manager") != "down":
            try:
                health = bus.request({"action": "health"}, timeout_s=1)
            except AssertionError:  # the agent is not up yet
                health = {}
        assert health.get("model_manager") == "down" and health["live"], health
        queued = bus.request({"action": "queue_for_batch", "audio_data": audio, "request_id": "kept"})
        assert queued["status"] == "queued", queued
        victim = model_manager_process(bus.process.pid)
        victim.kill()
        result: dict = {"status": "pending"}
        deadline = time.monotonic() + 240
        while result["status"] == "pending" and time.monotonic() < deadline:
            time.sleep(0.5)
            result = bus.request({"action": "get_result", "request_id": "kept"}, timeout_s=10)
        assert bus.process.poll() is None, "the launcher gave up"
        assert model_manager_process(bus.process.pid).pid != victim.pid
    finally:
        stop_bus(bus)
    assert result["status"] == "success", result
    assert word_error_rate(SENTENCES[0], result["text"]) < 0.5
    assert "restarting" in bus.log_path.read_text()
