"""What the long lane's low OS priority buys: short batches beside a long request's units.

    .venv/bin/python scripts/lane_priority.py [--task stt|tts] [--batches 15] [--rounds 3]

One engine (the task's first model in config/llm_config.yaml) runs short batches one after
another: four voice commands of 1-4 s (STT) or four one-sentence replies (TTS), with 50 ms
between batches. Each round times them in three modes, in a new order every round:
  alone   nothing else runs;
  same    a second copy of the engine runs a long request's units (a 2-minute recording's
          30 s windows, or a long text's pieces) in a loop on another thread, at the same
          priority: what a second worker thread without a lane would do;
  lane    the same, but the copy is built and run at the long lane's priority (nice 19),
          as model_manager/lanes.py does.
Printed per mode: the short batches' p50 and p95 (median over the rounds, and their range),
p50 against alone (per round, median and range) and the long units finished per second
beside them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from bench.mixed import LONG_TEXT, TTS_SENTENCES  # noqa: E402
from wer_set import PHRASES, espeak  # noqa: E402

from model_manager.config import load_config  # noqa: E402
from model_manager.engines.base import Engine  # noqa: E402
from model_manager.engines.registry import build_engine  # noqa: E402
from model_manager.lanes import build_at_low_priority, lower_priority  # noqa: E402

MODES = ("alone", "same", "lane")
RATE = 16000


def short_fields(task: str) -> list[dict[str, Any]]:
    if task == "tts":
        return [{"text": text} for text in TTS_SENTENCES[:4]]
    clips = [espeak(p, "en-us", 170) for p in PHRASES]
    return [{"audio": a, "sample_rate": RATE} for a in clips if 1.0 <= len(a) / RATE <= 4.0][:4]


def long_fields(task: str) -> dict[str, Any]:
    if task == "tts":
        return {"text": LONG_TEXT}
    pause = np.zeros(RATE // 2, np.float32)
    parts: list[np.ndarray] = []
    for phrase in PHRASES:
        parts += [espeak(phrase, "en-us", 170), pause]
        if sum(len(p) for p in parts) >= 120 * RATE:
            break
    return {"audio": np.concatenate(parts), "sample_rate": RATE}


class Background:
    """A long request's units, run in a loop on `engine` by a thread of its own."""

    def __init__(self, engine: Engine, fields: dict[str, Any], low_priority: bool) -> None:
        self.units = engine.split(engine.prepare(fields))
        self.engine, self.low_priority = engine, low_priority
        self.done = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        if self.low_priority:
            lower_priority()
        while not self._stop.is_set():
            for unit in self.units:
                self.engine.run_batch([unit])
                self.done += 1
                if self._stop.is_set():
                    return

    def __enter__(self) -> Background:
        self._thread.start()
        time.sleep(1.0)  # its first unit is under way
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def time_batches(engine: Engine, batch: list[Any], count: int) -> list[float]:
    engine.run_batch(batch)
    seconds = []
    for _ in range(count):
        started = time.perf_counter()
        engine.run_batch(batch)
        seconds.append(time.perf_counter() - started)
        time.sleep(0.05)
    return seconds


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, round(0.95 * len(values)) - 1)]


def spread(values: list[float], scale: float = 1.0, digits: int = 0) -> str:
    fmt: Callable[[float], str] = lambda v: f"{v * scale:.{digits}f}"  # noqa: E731
    return f"{fmt(statistics.median(values))} [{fmt(min(values))}-{fmt(max(values))}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=("stt", "tts"), default="stt")
    parser.add_argument("--batches", type=int, default=15, help="short batches timed per mode and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    spec = load_config().models(args.task)[0]
    engine = build_engine(spec)
    beside = {"same": build_engine(spec), "lane": build_at_low_priority(lambda: build_engine(spec))}
    batch = [engine.prepare(f) for f in short_fields(args.task)]
    long = long_fields(args.task)
    print(f"{spec.name} on {engine.device}: batches of {len(batch)} short requests, "
          f"{args.batches} per mode, {args.rounds} rounds")
    results: dict[str, dict[str, list[float]]] = {m: {"p50": [], "p95": [], "units_s": []} for m in MODES}
    for round_index in range(args.rounds):
        order = MODES[round_index % 3:] + MODES[:round_index % 3]
        for mode in order:
            if mode == "alone":
                seconds, rate = time_batches(engine, batch, args.batches), 0.0
            else:
                with Background(beside[mode], long, low_priority=mode == "lane") as background:
                    started, before = time.perf_counter(), background.done
                    seconds = time_batches(engine, batch, args.batches)
                    rate = (background.done - before) / (time.perf_counter() - started)
            results[mode]["p50"].append(statistics.median(seconds))
            results[mode]["p95"].append(p95(seconds))
            results[mode]["units_s"].append(rate)
    print("| mode | short p50 ms | short p95 ms | p50 / alone | long units/s beside |")
    print("|---|---|---|---|---|")
    for mode in MODES:
        r = results[mode]
        ratios = [a / b for a, b in zip(r["p50"], results["alone"]["p50"], strict=True)]
        print(f"| {mode} | {spread(r['p50'], 1000)} | {spread(r['p95'], 1000)} | {spread(ratios, digits=2)}x "
              f"| {spread(r['units_s'], digits=2)} |")


if __name__ == "__main__":
    main()
