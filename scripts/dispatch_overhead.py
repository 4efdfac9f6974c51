"""What the bus adds to one request, this checkout against another (a baseline commit).

    git worktree add /tmp/voicebus-base <commit>
    .venv/bin/python scripts/dispatch_overhead.py --baseline /tmp/voicebus-base [--requests 60] [--rounds 3]

Each round starts the bus of each checkout in turn (STT only, on free ports, the same
.venv), sends `--requests` transcriptions of a 1 s clip one after another from one REQ
socket (msgpack float32, no batching company), and stops it. For every request, the bus's
share is its latency at the client minus the engine's own time in it (`timing`: prepare,
queue, compute): transport, intake, dispatch and the link to the model manager. Reported
per checkout and round: the share's p50 and p95 in ms, and the difference of the p50s
(this checkout minus the baseline) with its spread over rounds.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import numpy as np
import zmq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import free_ports  # noqa: E402
from speech import speak  # noqa: E402


def bus_env(checkout: Path, tmp: Path) -> tuple[dict[str, str], str]:
    """Environment for `checkout`'s bus on free ports (its config's own port keys)."""
    config = (checkout / "config" / "llm_config.yaml").read_text()
    names = ["STT_PORT", "TTS_PORT"]
    names += (["STT_BACKEND_PORT", "TTS_BACKEND_PORT", "STT_METRICS_PORT", "TTS_METRICS_PORT"]
              if "stt_backend_port" in config else ["MODEL_MANAGER_PORT"])
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    env = {**os.environ, **{f"VOICEBUS__ENDPOINTS__{k}": str(v) for k, v in ports.items()},
           "VOICEBUS__ENDPOINTS__HTTP_PORT": "0", "VOICEBUS__ENDPOINTS__MONITOR_PORT": "0",
           "VOICEBUS__ENDPOINTS__METRICS_PORT": "0", "VOICEBUS__MODELS__TTS": "[]",
           "VOICEBUS__BATCH_PROCESSING_CONFIG__WARMUP": "false", "VOICEBUS__LOGGING__LEVEL": "WARNING",
           "VOICEBUS__LIMITS__JOURNAL_DIR": str(tmp / "journal"), "PYTHONPATH": str(checkout)}
    return env, f"tcp://127.0.0.1:{ports['STT_PORT']}"


def measure(checkout: Path, clip: np.ndarray, requests: int) -> list[float]:
    """The bus's share of each of `requests` sequential transcriptions, in ms."""
    with tempfile.TemporaryDirectory() as tmp:
        env, address = bus_env(checkout, Path(tmp))
        log = Path(tmp) / "bus.log"
        bus = subprocess.Popen([sys.executable, "-m", "agents.launcher"], cwd=checkout, env=env,
                               stdout=open(log, "w"), stderr=subprocess.STDOUT)  # noqa: SIM115
        try:
            deadline = time.monotonic() + 180
            while "voicebus is ready" not in log.read_text():
                if time.monotonic() > deadline or bus.poll() is not None:
                    raise RuntimeError(f"the bus of {checkout} did not start:\n{log.read_text()[-2000:]}")
                time.sleep(0.2)
            sock = zmq.Context.instance().socket(zmq.REQ)
            sock.connect(address)
            body = msgpack.packb({"action": "transcribe", "audio_data": clip.astype("<f4").tobytes(),
                                  "dtype": "float32"}, use_bin_type=True)
            shares = []
            for i in range(requests + 3):  # the first three warm the caches
                started = time.perf_counter()
                sock.send(body)
                reply = msgpack.unpackb(sock.recv(), raw=False)
                elapsed_ms = (time.perf_counter() - started) * 1000
                timing = reply["timing"]
                if i >= 3:
                    engine_ms = timing["prepare_ms"] + timing["queue_ms"] + timing["compute_ms"]
                    shares.append(elapsed_ms - engine_ms)
            sock.close(linger=0)
            return shares
        finally:
            bus.send_signal(signal.SIGTERM)
            bus.wait(60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="another checkout (git worktree)")
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    clip = speak("Turn on the lights.")
    runs: dict[str, list[list[float]]] = {"this": [], "baseline": []}
    for r in range(args.rounds):
        order = [("this", ROOT), ("baseline", args.baseline)]
        for name, checkout in order if r % 2 == 0 else order[::-1]:
            runs[name].append(measure(checkout, clip, args.requests))
            p50 = np.percentile(runs[name][-1], 50)
            print(f"round {r + 1}/{args.rounds} {name}: bus share p50 {p50:.2f} ms", flush=True)
    print(f"\nBus share of one request ({args.requests} sequential requests a run, {args.rounds} rounds, "
          f"load average {os.getloadavg()[0]:.1f}):")
    print("checkout | p50 ms by round        | p95 ms by round")
    for name, shares in runs.items():
        p50s = ", ".join(f"{np.percentile(s, 50):.2f}" for s in shares)
        p95s = ", ".join(f"{np.percentile(s, 95):.2f}" for s in shares)
        print(f"{name:>8} | {p50s:<22} | {p95s}")
    pairs = zip(runs["this"], runs["baseline"], strict=True)
    added = [np.percentile(a, 50) - np.percentile(b, 50) for a, b in pairs]
    print(f"added p50 (this - baseline): min {min(added):+.2f}, median {np.median(added):+.2f}, "
          f"max {max(added):+.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
