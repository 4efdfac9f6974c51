"""Start-up and graceful shutdown of the whole bus, as separate processes."""

from __future__ import annotations

import signal
import threading
import time

import numpy as np
from conftest import start_bus, stop_bus
from speech import SENTENCES, speak


def test_sigterm_finishes_running_work_and_answers_everything_else(tmp_path):
    # One request per batch, so that most requests are still queued when SIGTERM arrives.
    bus = start_bus(
        tmp_path,
        {
            "VOICEBUS__BATCH_PROCESSING_CONFIG__MAX_BATCH_SIZE": "1",
            "VOICEBUS__BATCH_PROCESSING_CONFIG__MIN_BATCH_SIZE": "1",
        },
    )
    # Many clients with several sentences each, so that work is still queued when SIGTERM
    # arrives however fast the machine is.
    clients = 16
    replies: list[dict | None] = [None] * clients
    clip = np.concatenate([speak(s) for s in SENTENCES[:3]]).tolist()
    audio = [clip] * clients

    def client(i: int) -> None:
        replies[i] = bus.request(
            {"action": "transcribe", "audio_data": audio[i], "request_id": i}, timeout_s=60
        )

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    try:
        for t in threads:
            t.start()
        # Signal as soon as the first answer is back: the next batch is running, the rest queued.
        deadline = time.monotonic() + 60
        while all(r is None for r in replies) and time.monotonic() < deadline:
            time.sleep(0.01)
        bus.process.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(90)
        assert bus.process.wait(60) == 0
    finally:
        stop_bus(bus)
    assert all(r is not None for r in replies), "a request was left without a reply"
    outcomes = [r["status"] if r["status"] == "success" else r["error"]["code"] for r in replies]
    assert set(outcomes) <= {"success", "shutting_down"}, outcomes
    assert "success" in outcomes, "the running batch should finish"
    assert "shutting_down" in outcomes, "queued work should get an error reply"
    log = bus.log_path.read_text()
    assert "voicebus stopped" in log


def test_the_processes_a_launcher_starts_die_with_it_even_on_sigkill(tmp_path):
    """A launcher killed with SIGKILL must not leave its agents and model manager running as
    orphans that hold the bus's ports: the kernel tells each child (PR_SET_PDEATHSIG)."""
    import psutil

    bus = start_bus(tmp_path, {"VOICEBUS__BATCH_PROCESSING_CONFIG__WARMUP": "false"}, wait=False)
    launcher = psutil.Process(bus.process.pid)
    deadline = time.monotonic() + 60
    while len(children := launcher.children()) < 4:  # two agents, the gateway, a model manager
        assert time.monotonic() < deadline, "the launcher did not start its processes"
        time.sleep(0.1)
    bus.process.send_signal(signal.SIGKILL)
    bus.process.wait(10)
    gone, alive = psutil.wait_procs(children, timeout=60)
    assert not alive, [" ".join(p.cmdline()) for p in alive]
