"""Whisper's window policy through the bus, at 8 clients.

One bus serves the same weights as several models: the configured one (default policy) and
copies named "<name>-<floor>s" with `min_window_s` set to each floor; clients pick one by
`model_pref`. All therefore run on one bus, one machine and one set of clips, in rounds, each
round in a rotated order, so that drifting machine load hits them alike. Each round yields
one throughput ratio per model against 30 s windows; the report gives their median and
spread, and the WER of each (jiwer after Whisper's English normaliser).

Stages:
- burst (bench/burst.py): the batch sizes of the first batches after start-up;
- floors (bench/floors.py): every floor on 1-4 s commands, the WER set's and held-out ones;
- mixed: the default policy against 30 s windows on utterances of 1-6 s with one recording
  of 12-45 s in every four requests (espeak-ng voices of scripts/wer_set.py, a seed per
  run); the bucketing keeps the short ones out of the long ones' batches;
- lone: one client, the bus's time outside the engine.
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq

from bench.burst import burst_stage, burst_table
from bench.bus import CLIENT_TIMEOUT_S, error_code, wire_fields
from bench.floors import FLOORS, command_sets, floor_stage, floor_table, model_name
from bench.load import Outcome, Tick, closed_loop_samples, summarize
from bench.workload import STT_RATE, Workload
from model_manager.config import ModelSpec
from model_manager.engines.whisper.window_policy import DEFAULT_MIN_WINDOW_S

CLIENTS = 8
SHORT_RANGE_S = (1.0, 6.0)


def make_clips(count: int, long_every: int = 0, seed: int = 0) -> list[dict[str, Any]]:
    """`count` items {"audio", "reference"}: utterances of 1-6 s in four espeak-ng voices; with
    `long_every`, every long_every-th item is a recording of 12-45 s instead."""
    from wer_set import ESPEAK_VOICES, PHRASES, espeak

    rng = random.Random(seed)
    items: list[dict[str, Any]] = []
    while len(items) < count:
        voice = ESPEAK_VOICES[len(items) % 4]
        if long_every and len(items) % long_every == long_every - 1:
            target = rng.uniform(12, 45)
            parts, words = [], []
            while sum(len(p) for p in parts) < target * STT_RATE:
                text = rng.choice(PHRASES[20:])
                parts += [espeak(text, voice, 160), np.zeros(int(0.6 * STT_RATE), np.float32)]
                words.append(text)
            items.append({"audio": np.concatenate(parts), "reference": " ".join(words)})
            continue
        text = rng.choice(PHRASES)
        audio = espeak(text, voice, rng.choice([140, 170]))
        if SHORT_RANGE_S[0] <= len(audio) / STT_RATE <= SHORT_RANGE_S[1]:
            items.append({"audio": audio, "reference": text})
    return items


class TextConnection:
    """A bus client that names its model and keeps every (reference, text) it gets back."""

    def __init__(self, address: str, model: str, texts: list[tuple[str, str]], lock: threading.Lock) -> None:
        self.address = address
        self.model = model
        self.texts = texts
        self.lock = lock
        self._socket: zmq.Socket | None = None
        self.queue_ms: float | None = None  # the last reply's wait in the batcher
        self.prepare_ms: float | None = None  # the last reply's checks and speech detection
        self.compute_ms: float | None = None  # the last reply's batch's engine time
        self.batch_size: int | None = None  # and its batch's size

    def call(self, item: dict[str, Any]) -> Outcome:
        if self._socket is None:
            self._socket = zmq.Context.instance().socket(zmq.REQ)
            self._socket.setsockopt(zmq.LINGER, 0)
            self._socket.connect(self.address)
        message = {"action": "transcribe", **wire_fields("stt", item), "model_pref": self.model}
        self._socket.send(msgpack.packb(message, use_bin_type=True))
        if not self._socket.poll(int(CLIENT_TIMEOUT_S * 1000)):
            self.close()
            return Outcome(end=time.perf_counter(), error="no_reply")
        reply = msgpack.unpackb(self._socket.recv(), raw=False)
        end = time.perf_counter()
        code = error_code(reply)
        if code is None:
            with self.lock:
                self.texts.append((item["reference"], reply.get("text", "")))
        timing = reply.get("timing") or {}
        compute_ms = self.compute_ms = timing.get("compute_ms")
        self.queue_ms = timing.get("queue_ms")
        self.prepare_ms = timing.get("prepare_ms")
        self.batch_size = timing.get("batch_size")
        return Outcome(end=end, audio_s=len(item["audio"]) / STT_RATE, error=code,
                       engine_s=None if compute_ms is None else compute_ms / 1000)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


class WindowBus:
    """A bus serving `spec` as configured, and as "<name>-<floor>s" with min_window_s at each
    of `floors`."""

    def __init__(self, spec: ModelSpec, warmup: bool, floors: tuple[float, ...] = (30.0,)) -> None:
        import sys

        from bench.workload import ROOT

        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import start_bus

        self.default = spec.name
        self.full = model_name(spec.name, 30.0)
        copies = [spec.model_copy(update={"name": model_name(spec.name, floor),
                                          "options": {**spec.options, "min_window_s": floor}})
                  for floor in floors]
        tmp = Path(tempfile.mkdtemp(prefix="voicebus-windows-"))
        env = {
            "VOICEBUS__MODELS__STT": json.dumps([spec.model_dump(), *(c.model_dump() for c in copies)]),
            "VOICEBUS__MODELS__TTS": "[]",
            "VOICEBUS__BATCH_PROCESSING_CONFIG__WARMUP": "true" if warmup else "false",
            "VOICEBUS__LIMITS__JOURNAL_DIR": str(tmp / "journal"),
        }
        self._bus = start_bus(tmp, env)
        self.address = self._bus.stt_address

    def stats(self, model: str) -> dict[str, Any]:
        """The model manager's `stats` entry of `model`."""
        reply = self._bus.request({"action": "stats"})
        return next((m for m in reply.get("models", []) if m.get("model") == model), {})

    def stop(self) -> None:
        from conftest import stop_bus

        stop_bus(self._bus)


def wer_percent(pairs: list[tuple[str, str]]) -> float | None:
    if not pairs:
        return None
    from wer_set import wer

    return round(wer([r for r, _ in pairs], [h for _, h in pairs]), 2)


def compare(
    bus: WindowBus, items: list[dict[str, Any]], requests: int, rounds: int, tick: Tick
) -> dict[str, Any]:
    """Closed loop at CLIENTS on each model in turn, `rounds` times, rotating which goes first."""
    workload = Workload("stt", tuple(items))
    models = {"default": bus.default, "min_window_s=30": bus.full}
    lock = threading.Lock()
    texts: dict[str, list[tuple[str, str]]] = {name: [] for name in models}
    samples: dict[str, list[Any]] = {name: [] for name in models}
    walls: dict[str, list[float]] = {name: [] for name in models}
    per_round: list[float] = []
    names = list(models)
    for round_index in range(rounds):
        rates = {}
        for name in names[round_index % 2:] + names[:round_index % 2]:
            connect = partial(TextConnection, bus.address, models[name], texts[name], lock)
            got, wall = closed_loop_samples(connect, workload, CLIENTS, requests, tick)
            samples[name] += got
            walls[name].append(wall)
            rates[name] = sum(s.outcome.ok for s in got) / wall
        per_round.append(rates["default"] / rates["min_window_s=30"])
    rows = {name: {**summarize(samples[name], sum(walls[name])), "wer_percent": wer_percent(texts[name]),
                   "round_wall_s": [round(w, 2) for w in walls[name]]} for name in models}
    return {
        "clients": CLIENTS,
        "rounds": rounds,
        "requests_per_round": requests,
        "rows": rows,
        "throughput_ratio_by_round": [round(r, 3) for r in per_round],
        "throughput_ratio_median": round(statistics.median(per_round), 3),
        "wer_delta_points": _delta(rows),
    }


def lone_overhead(bus: WindowBus, items: list[dict[str, Any]], requests: int) -> dict[str, Any]:
    """One client, one request at a time, on the default model: the bus's time outside the
    engine per request (latency minus the engine's time for it that the reply reports: its
    `prepare` (checks, speech detection) and its batch's compute; what is left is transport,
    agents and the batcher's queue), the same without counting `prepare` as the engine's
    (latency minus compute), and its wait in the batcher (queue_ms)."""
    texts: list[tuple[str, str]] = []
    connection = TextConnection(bus.address, bus.default, texts, threading.Lock())
    outside, outside_compute, prepared, queued = [], [], [], []
    try:
        for index in range(requests):
            began = time.perf_counter()
            outcome = connection.call(items[index % len(items)])
            if outcome.ok and outcome.engine_s is not None and connection.queue_ms is not None:
                prepare_ms = connection.prepare_ms or 0.0
                outside_compute.append(1000 * (outcome.end - began - outcome.engine_s))
                outside.append(outside_compute[-1] - prepare_ms)
                prepared.append(prepare_ms)
                queued.append(connection.queue_ms)
    finally:
        connection.close()

    def pct(values: list[float], q: float) -> float | None:
        return round(float(np.percentile(values, q)), 2) if values else None

    return {"requests": requests, "measured": len(outside),
            "outside_engine_p50_ms": pct(outside, 50), "outside_engine_p99_ms": pct(outside, 99),
            "outside_compute_p50_ms": pct(outside_compute, 50),
            "outside_compute_p99_ms": pct(outside_compute, 99),
            "prepare_p50_ms": pct(prepared, 50), "prepare_p99_ms": pct(prepared, 99),
            "queue_p50_ms": pct(queued, 50), "queue_p99_ms": pct(queued, 99)}


def _delta(rows: dict[str, dict[str, Any]]) -> float | None:
    a, b = rows["default"]["wer_percent"], rows["min_window_s=30"]["wer_percent"]
    return None if a is None or b is None else round(a - b, 2)


def window_stage(spec: ModelSpec, quick: bool, tick: Tick, seed: int = 0) -> dict[str, Any]:
    """Every stage; see the module docstring."""
    rounds = 2 if quick else 4
    requests = 16 if quick else 48
    short = make_clips(24, seed=seed)
    mixed = make_clips(24, long_every=4, seed=seed + 1)
    commands = command_sets(seed, quick)
    report: dict[str, Any] = {
        "burst": burst_stage(spec, commands["held-out"], 64 if quick else 320, span_s=10 if quick else 30),
    }
    configured = float(spec.options.get("min_window_s", DEFAULT_MIN_WINDOW_S))
    bus = WindowBus(spec, warmup=not quick, floors=FLOORS)
    try:
        for items in (short, mixed):  # untimed: first calls of every window length
            compare(bus, items[:CLIENTS], CLIENTS, 1, lambda _n: None)
        report["floors"] = floor_stage(bus.address, spec.name, FLOORS, commands, 1 if quick else 3, tick,
                                       configured)
        report["mixed"] = compare(bus, mixed, requests, rounds, tick)
        report["lone"] = lone_overhead(bus, short, 16 if quick else 48)
    finally:
        bus.stop()
    report["mixed"]["clip_seconds"] = _seconds(mixed)
    return report


def _seconds(items: list[dict[str, Any]]) -> list[float]:
    lengths = [len(i["audio"]) / STT_RATE for i in items]
    return [round(min(lengths), 1), round(max(lengths), 1)]


def window_table(report: dict[str, Any]) -> str:
    lines = []
    if report.get("burst"):
        lines.append(burst_table(report["burst"]))
    if report.get("floors"):
        lines.append(floor_table(report["floors"]))
    lines.append("Whisper window policy through the bus, 8 clients (default vs min_window_s: 30)")
    for name in ("short", "mixed"):
        entry = report.get(name)
        if not entry:
            continue
        lo, hi = entry["clip_seconds"]
        by_round = entry["throughput_ratio_by_round"]
        lines.append(f"  {name} ({lo:g}-{hi:g} s clips, {entry['rounds']} rounds x "
                     f"{entry['requests_per_round']} requests each side):")
        for label, row in entry["rows"].items():
            lines.append(f"    {label:16} {row['throughput_rps'] or 0:6.2f} req/s  "
                         f"{row['audio_s_per_s'] or 0:6.1f} audio-s/s  p50 {row['p50_ms'] or 0:7.0f} ms  "
                         f"p99 {row['p99_ms'] or 0:7.0f} ms  WER {row['wer_percent']}%  "
                         f"errors {row['errors'] or 0}")
        lines.append(f"    throughput ratio default / 30 s: median {entry['throughput_ratio_median']:.2f}x "
                     f"(rounds: {', '.join(f'{r:.2f}' for r in by_round)}; spread {min(by_round):.2f}-"
                     f"{max(by_round):.2f}); WER difference {entry['wer_delta_points']} points")
    lone = report.get("lone")
    if lone:
        lines.append(f"  lone client, {lone['measured']} requests one at a time: bus time outside the engine "
                     f"p50 {lone['outside_engine_p50_ms']} ms, p99 {lone['outside_engine_p99_ms']} ms; "
                     f"of it in the batcher's queue p50 {lone['queue_p50_ms']} ms, "
                     f"p99 {lone['queue_p99_ms']} ms")
        lines.append(f"    the engine's prepare (checks, speech detection) p50 {lone['prepare_p50_ms']} ms, "
                     f"p99 {lone['prepare_p99_ms']} ms; latency minus compute alone p50 "
                     f"{lone['outside_compute_p50_ms']} ms, p99 {lone['outside_compute_p99_ms']} ms")
    if report.get("peer"):
        lines.append(f"  mixed, bus over Ray Serve peer (same engine): {report['peer']}")
    return "\n".join(lines)
