"""A crashed model manager is restarted by the launcher, and requests in flight still get answers."""

from __future__ import annotations

import threading
import time

import psutil
from conftest import NO_WARMUP, start_bus, stop_bus
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
    clients = 4
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
        time.sleep(0.3)  # requests are in the model manager's queue or running
        victim.kill()
        for t in threads:
            t.join(150)
        replacement = model_manager_process(bus.process.pid)
        assert replacement.pid != victim.pid
        health = bus.request({"action": "health"})
        assert health["ready"] is True
    finally:
        stop_bus(bus)
    for i, reply in enumerate(replies):
        assert reply is not None and reply["status"] == "success", reply
        assert word_error_rate(SENTENCES[i], reply["text"]) < 0.5
    log = bus.log_path.read_text()
    assert "restarting" in log and "resending" in log
