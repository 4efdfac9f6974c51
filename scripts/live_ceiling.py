"""How many live streams one STT agent carries when Whisper costs nothing: the ceiling that
the agent's own work (messages, VAD) sets, which a GPU box reaches long before its GPU.

    .venv/bin/python scripts/live_ceiling.py [--streams 64,160] [--vad-threads 1,2] [--rounds 2]

Each stream sends quiet noise (VAD runs on every frame, no utterance starts, so no Whisper
call is made) in 100 ms chunks at real-time pace, for `--seconds`. Printed per stream count
and `limits.stream_vad_threads` setting, in interleaved rounds (a fresh bus each): the
round trip of `stream_audio` (answered once the chunk has been through its VAD) p50 / p99,
and the STT agent's CPU in cores. A round trip that climbs towards 100 ms means the
agent falls behind real time. The client runs on the same machine: on a small one its
threads compete with the agent, so compare settings within a run, never across runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import psutil
import zmq

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from conftest import NO_WARMUP, start_bus, stop_bus  # noqa: E402

RATE = 16_000
CHUNK = RATE // 10


def stream(address: str, audio: np.ndarray, start_at: float, round_trips: list[float]) -> None:
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    try:
        sock.send(msgpack.packb({"action": "stream_open", "sample_rate": RATE, "language": "en"}))
        request_id = msgpack.unpackb(sock.recv())["request_id"]
        mine = []
        for k, start in enumerate(range(0, len(audio), CHUNK)):
            delay = start_at + (k + 1) * CHUNK / RATE - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent = time.perf_counter()
            sock.send(msgpack.packb({"action": "stream_audio", "request_id": request_id,
                                     "audio_data": audio[start:start + CHUNK].tobytes()}))
            reply = msgpack.unpackb(sock.recv())
            mine.append(time.perf_counter() - sent)
            if reply["status"] != "success":
                raise RuntimeError(f"stream_audio failed: {reply}")
        sock.send(msgpack.packb({"action": "stream_close", "request_id": request_id}))
        sock.recv()
        round_trips.extend(mine)
    finally:
        sock.close()


def stt_agent(launcher_pid: int) -> psutil.Process:
    for child in psutil.Process(launcher_pid).children(recursive=True):
        command = " ".join(child.cmdline())
        if "service_agent" in command and "stt" in command:
            return child
    raise RuntimeError("no STT agent among the launcher's processes")


def measure(address: str, agent: psutil.Process, streams: int, seconds: float) -> str:
    audio = (np.random.default_rng(0).standard_normal(int(seconds * RATE)) * 0.003).astype(np.float32)
    round_trips: list[float] = []
    began = time.perf_counter() + 0.5
    threads = [threading.Thread(target=stream, args=(address, audio, began + 0.1 * i / streams, round_trips))
               for i in range(streams)]
    cpu_before = sum(agent.cpu_times()[:2])
    wall_before = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cores = (sum(agent.cpu_times()[:2]) - cpu_before) / (time.perf_counter() - wall_before)
    p50, p99 = np.percentile(round_trips, [50, 99]) * 1000
    return (f"{streams:4d} streams: stream_audio round trip p50 {p50:6.1f} ms, p99 {p99:6.1f} ms "
            f"({len(round_trips)} chunks); STT agent {cores:.2f} cores")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", default="64,160", help="stream counts (comma-separated)")
    parser.add_argument("--vad-threads", default="1,2", help="limits.stream_vad_threads settings to compare")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20.0, help="audio per stream")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.streams.split(",")]
    for round_index in range(args.rounds):
        settings = args.vad_threads.split(",")
        for threads in settings[round_index % len(settings):] + settings[:round_index % len(settings)]:
            env = {**NO_WARMUP, "VOICEBUS__LIMITS__MAX_OPEN_STREAMS": str(max(counts)),
                   "VOICEBUS__LIMITS__STREAM_VAD_THREADS": threads}
            bus = start_bus(Path(tempfile.mkdtemp(prefix="voicebus-ceiling-")), env)
            try:
                agent = stt_agent(bus.process.pid)
                for count in counts:
                    result = measure(bus.stt_address, agent, count, args.seconds)
                    print(f"round {round_index}, vad threads {threads}: {result}", flush=True)
            finally:
                stop_bus(bus)
    return 0


if __name__ == "__main__":
    sys.exit(main())
