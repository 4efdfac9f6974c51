"""Scale-out: the same clients against 1, 2, ... model managers (--managers 1,2).

One agents-only bus (`agents.launcher --role agents`, STT only) stays up the whole stage.
For each level, in interleaved rounds (the order rotates each round, so drifting machine
load hits every level alike), N model managers are started, each pinned to its own core
(CPU affinity, `options.cpu_threads: 1`), and the stage waits until the agent counts N
live ones; then C clients send the workload's clips in a closed loop (one REQ socket each,
msgpack float32 audio) and the managers are stopped again.

Reported per level and round: requests/s and audio-seconds/s, latency p50/p95, and the
bus's own share of each request: its latency minus the engine's time in it (`timing`:
prepare, queue and compute), the part transport, intake and dispatch cost. The headline is
each level's throughput over one manager's, with its spread over rounds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq

from bench.stats import latency_summary
from bench.workload import ROOT, STT_RATE, make_workload

sys.path.insert(0, str(ROOT / "tests"))
from conftest import free_port  # noqa: E402

MODEL = "whisper-tiny.en"


class AgentsBus:
    """The agents-only launcher on free ports, STT only."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        names = ("STT_PORT", "TTS_PORT", "STT_BACKEND_PORT", "TTS_BACKEND_PORT", "STT_METRICS_PORT",
                 "TTS_METRICS_PORT")
        self.ports = {name: free_port() for name in names}
        self.env = {
            **os.environ,
            **{f"VOICEBUS__ENDPOINTS__{k}": str(v) for k, v in self.ports.items()},
            "VOICEBUS__ENDPOINTS__HTTP_PORT": "0", "VOICEBUS__ENDPOINTS__MONITOR_PORT": "0",
            "VOICEBUS__MODELS__TTS": "[]",
            "VOICEBUS__LIMITS__JOURNAL_DIR": str(tmp / "journal"),
            "VOICEBUS__LOGGING__LEVEL": "WARNING",
        }
        self.address = f"tcp://127.0.0.1:{self.ports['STT_PORT']}"
        self.process = subprocess.Popen([sys.executable, "-m", "agents.launcher", "--role", "agents"],
                                        cwd=ROOT, env=self.env, stdout=open(tmp / "agents.log", "w"),  # noqa: SIM115
                                        stderr=subprocess.STDOUT)

    def managers(self) -> int:
        url = f"http://127.0.0.1:{self.ports['STT_METRICS_PORT']}/metrics"
        try:
            text = urllib.request.urlopen(url, timeout=2).read().decode()
        except OSError:
            return -1
        series = f'voicebus_model_managers{{model="{MODEL}"}}'
        return int(float(next(line for line in text.splitlines() if line.startswith(series)).split()[-1]))

    def start_managers(self, count: int) -> list[subprocess.Popen]:
        cores = os.cpu_count() or 1
        started = []
        for i in range(count):
            env = {**self.env, "VOICEBUS__ENDPOINTS__METRICS_PORT": "0",
                   "VOICEBUS__BATCH_PROCESSING_CONFIG__WARMUP": "false",
                   "VOICEBUS__MODELS__STT__0__OPTIONS__CPU_THREADS": "1", "OMP_NUM_THREADS": "1"}
            core = {i % cores}
            started.append(subprocess.Popen(
                [sys.executable, "-m", "model_manager", "--models", MODEL], cwd=ROOT, env=env,
                stdout=open(self.tmp / f"manager{i}.log", "a"), stderr=subprocess.STDOUT,  # noqa: SIM115
                preexec_fn=lambda core=core: os.sched_setaffinity(0, core)))
        deadline = time.monotonic() + 120
        while self.managers() != count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{count} model managers did not register within 120 s")
            time.sleep(0.2)
        return started

    def stop_managers(self, managers: list[subprocess.Popen]) -> None:
        for process in managers:
            process.send_signal(signal.SIGTERM)
        for process in managers:
            process.wait(90)
        while self.managers() != 0:
            time.sleep(0.2)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(60)


def closed_loop(address: str, clips: list[np.ndarray], clients: int, requests: int) -> dict[str, Any]:
    """`requests` transcriptions by `clients` REQ sockets at once; throughput and latency."""
    lock = threading.Lock()
    todo = iter(range(requests))
    latencies: list[float] = []
    overheads: list[float] = []
    errors: list[str] = []
    audio_s = 0.0

    def client() -> None:
        nonlocal audio_s
        sock = zmq.Context.instance().socket(zmq.REQ)
        sock.connect(address)
        try:
            while True:
                with lock:
                    i = next(todo, None)
                if i is None:
                    return
                clip = clips[i % len(clips)]
                body = {"action": "transcribe", "audio_data": clip.astype("<f4").tobytes(),
                        "dtype": "float32", "sample_rate": STT_RATE}
                started = time.perf_counter()
                sock.send(msgpack.packb(body, use_bin_type=True))
                reply = msgpack.unpackb(sock.recv(), raw=False)
                elapsed = time.perf_counter() - started
                timing = reply.get("timing") or {}
                engine_ms = sum(timing.get(k, 0.0) for k in ("prepare_ms", "queue_ms", "compute_ms"))
                with lock:
                    if reply.get("status") != "success":
                        errors.append((reply.get("error") or {}).get("code", "?"))
                        continue
                    latencies.append(elapsed)
                    overheads.append(elapsed - engine_ms / 1000.0)
                    audio_s += len(clip) / STT_RATE
        finally:
            sock.close(linger=0)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {
        "requests": len(latencies), "errors": errors, "wall_s": round(wall, 3),
        "requests_per_s": round(len(latencies) / wall, 3), "audio_s_per_s": round(audio_s / wall, 3),
        **latency_summary(latencies), **latency_summary(overheads, prefix="bus_share_"),
    }


def managers_stage(levels: list[int], rounds: int, clients: int, requests: int) -> dict[str, Any]:
    clips = [item["audio"] for item in make_workload("stt", 8, quick=False).items]
    with tempfile.TemporaryDirectory() as tmp:
        bus = AgentsBus(Path(tmp))
        try:
            while bus.managers() < 0:
                time.sleep(0.2)
            runs: dict[int, list[dict[str, Any]]] = {n: [] for n in levels}
            for r in range(rounds):
                order = levels[r % len(levels):] + levels[:r % len(levels)]
                for n in order:
                    managers = bus.start_managers(n)
                    try:
                        closed_loop(bus.address, clips, clients, clients)  # warm every manager's caches
                        runs[n].append(closed_loop(bus.address, clips, clients, requests))
                    finally:
                        bus.stop_managers(managers)
                    rate = runs[n][-1]["requests_per_s"]
                    print(f"round {r + 1}/{rounds}, {n} model managers: {rate} req/s", flush=True)
        finally:
            bus.close()
    base = levels[0]
    speedups = {n: [run["requests_per_s"] / runs[base][i]["requests_per_s"]
                    for i, run in enumerate(runs[n])] for n in levels}
    return {"levels": levels, "rounds": rounds, "clients": clients, "requests": requests, "runs": runs,
            "speedup_over_first": {n: {"min": round(min(s), 3), "median": round(float(np.median(s)), 3),
                                       "max": round(max(s), 3)} for n, s in speedups.items()}}


def managers_table(stage: dict[str, Any]) -> str:
    lines = [f"Model managers ({stage['clients']} clients, {stage['requests']} requests a run, "
             f"{stage['rounds']} interleaved rounds; each manager pinned to one core):",
             "managers | req/s (rounds)          | audio-s/s | p50 s | bus share p50 ms | "
             "speed-up min/median/max"]
    for n in stage["levels"]:
        runs = stage["runs"][n]
        rates = ", ".join(f"{r['requests_per_s']:.2f}" for r in runs)
        audio = np.median([r["audio_s_per_s"] for r in runs])
        p50 = np.median([r["p50_ms"] for r in runs]) / 1000
        share = np.median([r["bus_share_p50_ms"] for r in runs])
        s = stage["speedup_over_first"][n]
        lines.append(f"{n:>8} | {rates:<23} | {audio:9.2f} | {p50:5.2f} | {share:15.1f} | "
                     f"{s['min']:.2f} / {s['median']:.2f} / {s['max']:.2f}")
    return "\n".join(lines)
