"""The benchmark's report: its JSON schema check and the tables printed at the end.

Pure: takes the report dict that `scripts/test_batch_processing.py` builds and returns
strings or problems. The report's contract (what `--json` promises to downstream readers):

- "tasks": the tasks measured, a non-empty subset of ["stt", "tts"]; for each, report[task]:
  - "engine_batch": {"1", "2", "4", "8": {"per_item_s": > 0, "total_s", "speedup"}}: the raw
    engine in process (seed 003's table); "bus_batch" the same through the bus;
  - "bus_overhead_ms_p50", "bus_overhead_ms_p99": single-request latency through the bus
    minus the engine's time for that same request (which the bus reports per request), ms;
    "paired_difference_ms_p50"/"_p99": the bus's latency minus the raw engine's in this
    process, measured in pairs (finite; noise can make either negative);
  - "bus_vs_raw_throughput": bus throughput at 8 clients over the best raw configuration (> 0);
  - "adaptive_vs_best_fixed": bus throughput with dynamic batching over the best pinned
    batch size, same load (> 0);
  - "closed_loop", "open_loop": rows of load results (whole requests); TTS also has
    "closed_loop_stream" (streams, with "ttfc_p50_ms" etc.).
- "peer": either {"skipped": "<reason>"} (task entries absent or null), or for every task
  {"throughput_ratio": > 0, "p99_ratio": > 0} (voicebus over peer, whole requests, same
  clients; TTS adds "ttfc_p50_ratio" for streams).
- "http" (absent with --no-http): {"skipped": "<reason>"}, or for every task
  {"throughput_ratio": > 0, "p99_ratio": > 0} (HTTP gateway over ZeroMQ, same bus, same
  workload, 8 clients, interleaved rounds), with the "zeromq" and "http" rows;
  "lone_latency" (lone requests, alternating: p50/p95/p99 ms per transport),
  "lone_latency_p50_ratio" and "lone_latency_paired_difference_ms_p50" (HTTP minus ZeroMQ);
  TTS the same for "first_audio" of lone streams.
- Every number finite: NaN and infinity are not JSON, and "not measured" is null.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

TASKS = ("stt", "tts")
BATCH_SIZES = ("1", "2", "4", "8")


def _number(value: Any, positive: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return value > 0 if positive else True


def validate_report(report: Any) -> list[str]:
    """Every way `report` breaks the contract above, as readable lines; [] when it holds."""
    if not isinstance(report, Mapping):
        return ["the report must be a JSON object"]
    problems: list[str] = []
    try:
        json.dumps(report, allow_nan=False)
    except (TypeError, ValueError) as exc:
        problems.append(f"not strict JSON: {exc}")
    tasks = report.get("tasks")
    if not isinstance(tasks, list) or not tasks or any(t not in TASKS for t in tasks):
        return [*problems, f"tasks must be a non-empty list drawn from {list(TASKS)}, got {tasks!r}"]
    for task in tasks:
        problems += _task_problems(task, report.get(task))
    problems += _peer_problems(report.get("peer"), tasks)
    if "http" in report:
        problems += http_problems(report.get("http"), tasks)
    return problems


def http_problems(http: Any, tasks: Sequence[str]) -> list[str]:
    """What breaks the contract of report["http"] (see the module docstring)."""
    if not isinstance(http, Mapping):
        return ["http: must be an object"]
    if "skipped" in http:
        return [] if isinstance(http["skipped"], str) else ["http.skipped: must be a reason"]
    problems = []
    for task in tasks:
        entry = http.get(task)
        if not isinstance(entry, Mapping):
            problems.append(f"http.{task}: missing")
            continue
        for key in ("throughput_ratio", "p99_ratio"):
            if not _number(entry.get(key), positive=True):
                problems.append(f"http.{task}.{key}: must be a positive number, got {entry.get(key)!r}")
    return problems


LONE_ROWS = (("lone_latency", "latency, lone request"), ("first_audio", "first audio, lone stream"))


def http_table(http: Mapping[str, Any]) -> str:
    """HTTP gateway against ZeroMQ: throughput, p99 and TTS time to first audio, per task."""
    if "skipped" in http:
        return f"HTTP gateway: skipped ({http['skipped']})"
    lines = ["HTTP gateway vs ZeroMQ, same bus and workload (ratios: HTTP over ZeroMQ)",
             f"{'task':<5} {'clients':>7} {'ZeroMQ req/s':>12} {'HTTP req/s':>10} {'ratio':>6} "
             f"{'ZeroMQ p99':>10} {'HTTP p99':>9} {'ratio':>6}"]
    for task, entry in http.items():
        zmq, web = entry["zeromq"], entry["http"]
        lines.append(" ".join([
            f"{task:<5} {entry['clients']:>7}", _cell(zmq["throughput_rps"], 12),
            _cell(web["throughput_rps"], 10), _cell(entry["throughput_ratio"], 6),
            _cell(zmq["p99_ms"], 10, 0), _cell(web["p99_ms"], 9, 0), _cell(entry["p99_ratio"], 6)]))
        for name, what in LONE_ROWS:
            lone = entry.get(name)
            if lone:
                zmq_ms, web_ms = (_cell(lone[t][f"{name}_p50_ms"], 0, 0) for t in ("zeromq", "http"))
                lines.append(f"      {what}, p50: ZeroMQ {zmq_ms} ms, HTTP {web_ms} ms, "
                             f"ratio {_cell(entry[f'{name}_p50_ratio'], 0)}, paired difference "
                             f"{_cell(entry[f'{name}_paired_difference_ms_p50'], 0, 1)} ms")
        overhead = entry.get("overhead_ms")
        if overhead:
            zmq_ms, web_ms = (f"{_cell(overhead[t]['p50_ms'], 0, 1)} / {_cell(overhead[t]['p99_ms'], 0, 1)}"
                              for t in ("zeromq", "http"))
            lines.append(f"      overhead, latency minus engine time, p50 / p99: ZeroMQ {zmq_ms} ms, "
                         f"HTTP {web_ms} ms")
        rounds = ", ".join(_cell(r.get("ratio"), 0) for r in entry.get("rounds", []))
        lines.append(f"      throughput ratio per round: {rounds}")
    return "\n".join(lines)


def _cell(value: Any, width: int, digits: int = 2) -> str:
    text = "n/a" if value is None else f"{value:.{digits}f}"
    return f"{text:>{width}}"


def _task_problems(task: str, entry: Any) -> list[str]:
    if not isinstance(entry, Mapping):
        return [f"{task}: missing"]
    problems = []
    for table in ("engine_batch", "bus_batch"):
        rows = entry.get(table)
        if not isinstance(rows, Mapping):
            problems.append(f"{task}.{table}: missing")
            continue
        for size in BATCH_SIZES:
            row = rows.get(size)
            if not isinstance(row, Mapping) or not _number(row.get("per_item_s"), positive=True):
                problems.append(f"{task}.{table}.{size}.per_item_s: must be a positive number")
    for key in ("bus_overhead_ms_p50", "bus_overhead_ms_p99"):
        if not _number(entry.get(key)):
            problems.append(f"{task}.{key}: must be a number, got {entry.get(key)!r}")
    for key in ("bus_vs_raw_throughput", "adaptive_vs_best_fixed"):
        if not _number(entry.get(key), positive=True):
            problems.append(f"{task}.{key}: must be a positive number, got {entry.get(key)!r}")
    for key in ("closed_loop", "open_loop"):
        if not isinstance(entry.get(key), list):
            problems.append(f"{task}.{key}: must be a list of load rows")
    return problems


def _peer_problems(peer: Any, tasks: Sequence[str]) -> list[str]:
    if not isinstance(peer, Mapping):
        return ["peer: missing (give the results, or {'skipped': reason})"]
    if "skipped" in peer:
        if not isinstance(peer["skipped"], str) or not peer["skipped"].strip():
            return ["peer.skipped: must say why"]
        return [f"peer.{t}: results given although skipped" for t in tasks if peer.get(t) is not None]
    problems = []
    for task in tasks:
        entry = peer.get(task)
        if not isinstance(entry, Mapping):
            problems.append(f"peer.{task}: missing")
            continue
        for key in ("throughput_ratio", "p99_ratio"):
            if not _number(entry.get(key), positive=True):
                problems.append(f"peer.{task}.{key}: must be a positive number, got {entry.get(key)!r}")
    return problems


# --- tables ----------------------------------------------------------------------------------


def _fmt(value: Any, spec: str = ".1f", suffix: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{suffix}"


def batch_table(title: str, table: Mapping[str, Mapping[str, float]]) -> str:
    """Seed 003's table: | Batch Size | Avg Time/Sample | Total Time | Speedup |."""
    lines = [
        title,
        "| Batch Size | Avg Time/Sample | Total Time | Speedup |",
        "|------------|-----------------|------------|---------|",
    ]
    for size, row in table.items():
        label = f"{size} (single)" if size == "1" else size
        lines.append(
            f"| {label:<10} | {_fmt(row['per_item_s'], '.3f', 's'):<15} "
            f"| {_fmt(row['total_s'], '.2f', 's'):<10} | {_fmt(row['speedup'], '.2f', 'x'):<7} |"
        )
    return "\n".join(lines)


def _batches(histogram: Mapping[str, int] | None) -> str:
    return " ".join(f"{size}:{n}" for size, n in (histogram or {}).items()) or "–"


def _errors(errors: Mapping[str, int]) -> str:
    return " ".join(f"{code}:{n}" for code, n in errors.items()) or "0"


def load_rows(entry: Mapping[str, Any], peer: Mapping[str, Any]) -> list[tuple[str, str, Mapping[str, Any]]]:
    """(system, load, row) for every load result of one task: the closed-loop sweeps of both
    systems, whole and streamed, then the bus's pinned batch sizes and its open loop."""
    rows: list[tuple[str, str, Mapping[str, Any]]] = []
    for system, loads in (("voicebus", entry), ("peer", peer)):
        for key, how in (("closed_loop", ""), ("closed_loop_stream", ", streams")):
            rows += [(system, f"{r['clients']} clients{how}", r) for r in loads.get(key) or []]
    fixed = (entry.get("fixed_vs_adaptive") or {}).get("fixed") or {}
    rows += [("voicebus", f"pinned to {size}, {r['clients']} clients", r) for size, r in fixed.items()]
    rows += [
        ("voicebus", f"open {r['rate']} = {r['rate_rps']:.2f}/s", r) for r in entry.get("open_loop") or []
    ]
    return rows


def load_table(title: str, rows: Sequence[tuple[str, str, Mapping[str, Any]]]) -> str:
    """One line per (system, load, result row) of closed- or open-loop load."""
    lines = [
        title,
        "| System | Load | Req/s | Audio s/s | p50 ms | p95 ms | p99 ms | TTFC p50 ms "
        "| Batches (size:n) | Errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for system, load, row in rows:
        lines.append(
            f"| {system} | {load} | {_fmt(row.get('throughput_rps'), '.2f')} "
            f"| {_fmt(row.get('audio_s_per_s'), '.2f')} | {_fmt(row.get('p50_ms'), '.0f')} "
            f"| {_fmt(row.get('p95_ms'), '.0f')} | {_fmt(row.get('p99_ms'), '.0f')} "
            f"| {_fmt(row.get('ttfc_p50_ms'), '.0f')} | {_batches(row.get('batch_sizes'))} "
            f"| {_errors(row.get('errors', {}))} |"
        )
    return "\n".join(lines)


def summary(report: Mapping[str, Any]) -> str:
    """The ratios of the run, one task per line, then the peer's."""
    lines = ["Ratios measured in this run:"]
    for task in report.get("tasks", []):
        e = report[task]
        lines.append(
            f"  {task}: bus overhead p50 {_fmt(e.get('bus_overhead_ms_p50'))} ms, "
            f"p99 {_fmt(e.get('bus_overhead_ms_p99'))} ms "
            f"(bus minus raw in process, paired: p50 {_fmt(e.get('paired_difference_ms_p50'))} ms); "
            f"bus/raw throughput {_fmt(e.get('bus_vs_raw_throughput'), '.2f', 'x')} "
            f"(8 clients vs raw batch {e.get('best_raw', {}).get('batch_size', '?')}); "
            f"adaptive/best fixed {_fmt(e.get('adaptive_vs_best_fixed'), '.2f', 'x')}"
        )
    peer = report.get("peer") or {}
    if "skipped" in peer:
        lines.append(f"  peer: skipped ({peer['skipped']})")
    for task in report.get("tasks", []):
        entry = peer.get(task)
        if entry:
            lines.append(
                f"  {task}: voicebus/peer at {entry.get('clients')} clients: "
                f"throughput {_fmt(entry.get('throughput_ratio'), '.2f', 'x')}, "
                f"p99 {_fmt(entry.get('p99_ratio'), '.2f', 'x')}"
                + (
                    f", streams' time to first chunk {_fmt(entry['ttfc_p50_ratio'], '.2f', 'x')}"
                    f" (at {entry.get('ttfc_clients', '?')} clients)"
                    if "ttfc_p50_ratio" in entry
                    else ""
                )
                + " (throughput above 1, times below 1 favour voicebus)"
            )
    return "\n".join(lines)
