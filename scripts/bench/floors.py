"""Whisper's window floor through the bus: throughput beside WER for every floor, on commands.

One bus serves the same weights once per floor ("<name>-<floor>s", `min_window_s` set), so
every floor runs on one bus, one machine and one set of clips. Two sets of 1-4 s clips
(what a voice agent's commands are):
- the WER set's (scripts/wer_set.py build), which the window policy was tuned on;
- a held-out set: phrases drawn with a seed that no setting was tuned on
  (wer_set.held_out_set), espeak-ng voices at other speeds and Kokoro voices.

Each round sends every clip of each set once to each floor (8 clients, closed loop), the
floors in a rotated order each round so that drifting machine load hits them alike. A
floor's throughput is compared with the 30 s windows' in the same round; the report gives
the median of those ratios with their spread, the WER of each floor on each set (jiwer after
Whisper's English normaliser, over every round's replies) and the load average per round.
"""

from __future__ import annotations

import os
import statistics
import threading
from functools import partial
from typing import Any

from bench.load import Sample, Tick, closed_loop_samples, summarize
from bench.workload import Workload

FLOORS = (2.0, 4.0, 6.0, 8.0, 10.0, 15.0, 30.0)
CLIENTS = 8
REFERENCE = 30.0


def model_name(base: str, floor: float) -> str:
    return f"{base}-{floor:g}s"


def command_sets(seed: int, quick: bool) -> dict[str, list[dict[str, Any]]]:
    """{"WER set": ..., "held-out": ...}: items {"audio", "reference"} of 1-4 s; the WER set
    only where it has been built."""
    from wer_set import DEFAULT_DIR, HELD_OUT_COUNT, SHORT_CLIP_S, held_out_set, load_set

    sets: dict[str, list[dict[str, Any]]] = {}
    if (DEFAULT_DIR / "manifest.jsonl").is_file():
        clips = [(c, a) for c, a in load_set(DEFAULT_DIR) if c.kind == "short" and c.seconds <= SHORT_CLIP_S]
        sets["WER set"] = [{"audio": a, "reference": c.text} for c, a in clips]
    held = held_out_set(1000 + seed, HELD_OUT_COUNT)
    sets["held-out"] = [{"audio": a, "reference": c.text} for c, a in held]
    if quick:
        sets = {name: items[::6] for name, items in sets.items()}
    return sets


def floor_stage(
    address: str, base: str, floors: tuple[float, ...], sets: dict[str, list[dict[str, Any]]],
    rounds: int, tick: Tick, configured: float
) -> dict[str, Any]:
    from bench.windows import TextConnection, wer_percent

    lock = threading.Lock()
    texts = {(s, f): [] for s in sets for f in floors}  # type: dict[tuple[str, float], list[tuple[str, str]]]
    samples: dict[tuple[str, float], list[Sample]] = {k: [] for k in texts}
    walls: dict[tuple[str, float], list[float]] = {k: [] for k in texts}
    rates: dict[tuple[str, float], list[float]] = {k: [] for k in texts}
    load: list[float] = []
    for round_index in range(rounds):
        shift = round_index % len(floors)
        for name, items in sets.items():
            workload = Workload("stt", tuple(items))
            for floor in floors[shift:] + floors[:shift]:
                connect = partial(TextConnection, address, model_name(base, floor), texts[name, floor], lock)
                got, wall = closed_loop_samples(connect, workload, CLIENTS, len(items), tick)
                samples[name, floor] += got
                walls[name, floor].append(wall)
                rates[name, floor].append(sum(s.outcome.ok for s in got) / wall)
        load.append(round(os.getloadavg()[0], 2))
    report: dict[str, Any] = {"clients": CLIENTS, "rounds": rounds, "configured_floor": configured,
                              "load_average_by_round": load, "sets": {}}
    for name, items in sets.items():
        rows = {}
        for floor in floors:
            key = (name, floor)
            summary = summarize(samples[key], sum(walls[key]))
            ratios = [r / ref for r, ref in zip(rates[key], rates[name, REFERENCE], strict=True)]
            rows[f"{floor:g}"] = {
                "throughput_rps": round(summary["throughput_rps"] or 0, 3),
                "p50_ms": summary.get("p50_ms"),
                "p95_ms": summary.get("p95_ms"),
                "errors": summary["errors"],
                "wer_percent": wer_percent(texts[key]),
                "ratio_by_round": [round(r, 3) for r in ratios],
                "ratio_median": round(statistics.median(ratios), 3),
            }
        report["sets"][name] = {"clips": len(items), "rows": rows}
    return report


def floor_table(report: dict[str, Any]) -> str:
    sets = report["sets"]
    lines = [f"Window floors through the bus, 1-4 s clips, {report['clients']} clients, {report['rounds']} "
             f"interleaved rounds (load average by round: {report['load_average_by_round']}); "
             f"* the configured floor"]
    header = f"  {'floor':>6}"
    for name, entry in sets.items():
        header += f" | {name + ' (' + str(entry['clips']) + ' clips)':^38}"
    lines.append(header)
    lines.append(f"  {'':>6}" + " | req/s  x30 s median [spread]     WER %" * len(sets))
    for floor in next(iter(sets.values()))["rows"]:
        mark = "*" if float(floor) == report["configured_floor"] else " "
        line = f"  {floor + ' s' + mark:>6}"
        for entry in sets.values():
            row = entry["rows"][floor]
            by_round = row["ratio_by_round"]
            line += (f" | {row['throughput_rps']:5.2f}  {row['ratio_median']:5.2f}x "
                     f"[{min(by_round):.2f}-{max(by_round):.2f}]  {row['wer_percent']:8.2f}")
        lines.append(line)
    return "\n".join(lines)
