"""The measurements of one run, per task: what runs against the bus, the peer and the raw
engine, in which order, with which load. `scripts/test_batch_processing.py` strings these
together and assembles the report.

Order on the bus, per task: the batch table with pinned sizes; closed loop at 8 clients
with each pinned size, then (back to the configured, adaptive policy) single requests for
the overhead, each paired with the same request on the raw engine in process, the
closed-loop sweep of whole requests (its 8-client row is the adaptive one), for TTS the
sweep of streams, and the open loop. The fixed and adaptive rows at 8 clients thus run
close together on the same bus. Throughput is only ever compared between whole requests.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from bench import engine as engine_bench
from bench.engine import BatchRunner
from bench.load import Connection, Tick, closed_loop, open_loop
from bench.stats import Rate, closest, histogram_delta, latency_summary, poisson_schedule, ratio
from bench.workload import Mode, Task, Workload
from model_manager.config import BatchConfig

BATCH_SIZES = (1, 2, 4, 8)
#: The concurrency the headline ratios are quoted at (bus vs raw, adaptive vs fixed, peer).
HEADLINE_CLIENTS = 8


@dataclass(frozen=True)
class Plan:
    """How much of everything one run does; the progress bar's total comes from here too."""

    clips: int  # items in the batch tables: a multiple of every batch size
    warmup_items: int  # the untimed batch before each batch table
    singles: int  # single requests, raw and through the bus, for the overhead
    levels: tuple[int, ...]  # closed-loop clients
    stream_levels: tuple[int, ...]  # closed-loop clients of the TTS stream sweep
    min_requests: int  # requests per closed-loop level at least...
    per_client: int  # ...or this many per client, if more
    arrivals: int  # open-loop requests per rate
    rates: tuple[Rate, ...]

    def requests(self, clients: int) -> int:
        return max(self.min_requests, clients * self.per_client)

    def units(self, peer: bool, streams: bool = False) -> dict[str, int]:
        """Requests each stage of one task sends (the progress bar's units); `streams`: the
        task is also swept with streams (TTS)."""
        table = self.warmup_items + self.clips * len(BATCH_SIZES)
        sweep = sum(self.requests(c) for c in self.levels)
        if streams:
            sweep += sum(self.requests(c) for c in self.stream_levels)
        return {
            "engine": table,
            "bus": table
            + len(BATCH_SIZES) * self.requests(HEADLINE_CLIENTS)
            + self.singles
            + sweep
            + self.arrivals * len(self.rates),
            "peer": self.warmup_items + sweep if peer else 0,
        }


class System(Protocol):
    """What the load stages need of a served system (bus.Bus and peer.Peer)."""

    def connection(self, workload: Workload, mode: Mode) -> Connection: ...

    def histogram(self, task: Task) -> dict[str, int]: ...


def sweep(
    system: System, workload: Workload, mode: Mode, levels: Sequence[int], plan: Plan, tick: Tick
) -> list[dict[str, Any]]:
    """Closed loop at each number of clients, with the batch sizes the system formed."""
    rows = []
    for clients in levels:
        before = system.histogram(workload.task)
        row = closed_loop(
            lambda: system.connection(workload, mode), workload, clients, plan.requests(clients), tick
        )
        row["mode"] = mode
        row["batch_sizes"] = histogram_delta(before, system.histogram(workload.task))
        rows.append(row)
    return rows


def load_stage(
    system: System, workload: Workload, plan: Plan, tick: Tick, warm: bool = False
) -> dict[str, Any]:
    """The closed-loop sweep every system gets: whole requests ("closed_loop"), and for TTS
    also streams ("closed_loop_stream", with time to first chunk). `warm`: first send
    `plan.warmup_items` requests at once, untimed, to a system that has not served yet (the
    bus has, by then: its batch table ran first), so first-call costs are not counted."""
    if warm and plan.warmup_items:
        n = plan.warmup_items
        closed_loop(lambda: system.connection(workload, "single"), workload, n, n, tick)
    stage = {"closed_loop": sweep(system, workload, "single", plan.levels, plan, tick)}
    if "stream" in workload.modes:
        stage["closed_loop_stream"] = sweep(system, workload, "stream", plan.stream_levels, plan, tick)
    return stage


def engine_stage(spec: Any, workload: Workload, plan: Plan, tick: Tick) -> tuple[dict[str, Any], BatchRunner]:
    """Seed 003's table on the raw engine, in this process. Returns the entry and the engine's
    runner, kept for the paired single-request latencies of `bus_stage`."""
    raw = engine_bench.raw_runner(engine_bench.load_engine(spec))
    table = engine_bench.batch_table(
        raw, workload.items[: plan.clips], BATCH_SIZES, tick, warmup_items=plan.warmup_items
    )
    size, rps = engine_bench.best_throughput(table)
    entry = {
        "model": spec.name,
        "clips": plan.clips,
        "engine_batch": table,
        "best_raw": {"batch_size": size, "throughput_rps": rps},
    }
    return entry, raw


def paired_singles(
    raw: BatchRunner, connection: Connection, workload: Workload, count: int, tick: Tick
) -> dict[str, Any]:
    """Single-request latency of the raw engine and of the system, measured in pairs (one
    after the other, for the same item, alternating which goes first), so that a change in
    machine load during the run moves both sides alike and cancels out of the difference."""
    raw_s: list[float] = []
    system_s: list[float] = []
    errors: Counter[str] = Counter()
    for index in range(count):
        item = workload.item(index)
        for side in ("raw", "system") if index % 2 == 0 else ("system", "raw"):
            began = time.perf_counter()
            if side == "raw":
                raw([item])
                raw_s.append(time.perf_counter() - began)
                continue
            outcome = connection.call(item)
            if outcome.ok:
                system_s.append(outcome.end - began)
            else:
                errors[str(outcome.error)] += 1
        tick(1)
    connection.close()
    return {
        "raw_single_ms": latency_summary(raw_s),
        "bus_single_ms": latency_summary(system_s),
        "single_errors": dict(errors),
    }


def bus_stage(
    bus: Any, raw: BatchRunner, workload: Workload, plan: Plan, batching: BatchConfig, seed: int, tick: Tick
) -> dict[str, Any]:
    """Everything measured through the bus for one task (see the module docstring for the
    order). `bus` is a bench.bus.Bus and `raw` the in-process engine's runner; the result
    holds measured numbers, the ratios come from `ratios`."""
    from bench.bus import batch_runner

    task = workload.task
    marks: dict[int, dict[str, int]] = {}

    def pin(size: int) -> None:
        bus.pin_batch_size(task, size)
        marks[size] = bus.histogram(task)

    def formed(size: int) -> dict[str, Any]:
        return {"batch_sizes": histogram_delta(marks[size], bus.histogram(task))}

    try:
        bus_table = engine_bench.batch_table(
            batch_runner(bus, workload),
            workload.items[: plan.clips],
            BATCH_SIZES,
            tick,
            pin,
            formed,
            warmup_items=plan.warmup_items,
        )
        fixed = {}
        for size in BATCH_SIZES:
            pin(size)
            fixed[str(size)] = sweep(bus, workload, "single", [HEADLINE_CLIENTS], plan, tick)[0]
    finally:
        bus.restore(task, batching)
    singles = paired_singles(raw, bus.connection(workload, "single"), workload, plan.singles, tick)
    loads = load_stage(bus, workload, plan, tick)
    capacity = max((r["throughput_rps"] or 0.0 for r in loads["closed_loop"]), default=0.0)
    rng = np.random.default_rng(seed)
    opened = []
    for rate in plan.rates:
        rps = rate.resolve(capacity)
        before = bus.histogram(task)
        row = open_loop(
            lambda: bus.connection(workload, "single"),
            workload,
            poisson_schedule(rps, plan.arrivals, rng),
            tick,
        )
        opened.append(
            {
                "rate": str(rate),
                "rate_rps": rps,
                **row,
                "batch_sizes": histogram_delta(before, bus.histogram(task)),
            }
        )
    return {
        "bus_batch": bus_table,
        **singles,
        "fixed_vs_adaptive": {"clients": HEADLINE_CLIENTS, "fixed": fixed},
        **loads,
        "open_loop": opened,
    }


def row_at(rows: Sequence[dict[str, Any]], clients: int) -> dict[str, Any]:
    """The closed-loop row at `clients`, or at the nearest concurrency measured."""
    return next(r for r in rows if r["clients"] == closest([r["clients"] for r in rows], clients))


def ratios(entry: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of one task from its measured rows (all from this run)."""
    raw, bus = entry["raw_single_ms"], entry["bus_single_ms"]
    headline = row_at(entry["closed_loop"], HEADLINE_CLIENTS)
    fixed = entry["fixed_vs_adaptive"]["fixed"]
    best_fixed = max(fixed, key=lambda s: fixed[s]["throughput_rps"] or 0.0)
    entry["fixed_vs_adaptive"].update(adaptive=headline, best_fixed_size=int(best_fixed))
    overhead = {
        f"bus_overhead_ms_{q}": None if bus[f"{q}_ms"] is None else bus[f"{q}_ms"] - raw[f"{q}_ms"]
        for q in ("p50", "p99")
    }
    return {
        **overhead,
        "bus_vs_raw_throughput": ratio(headline["throughput_rps"], entry["best_raw"]["throughput_rps"]),
        "adaptive_vs_best_fixed": ratio(headline["throughput_rps"], fixed[best_fixed]["throughput_rps"]),
    }


def peer_ratios(bus: dict[str, Any], peer: dict[str, Any]) -> dict[str, Any]:
    """voicebus over peer, from the `load_stage` results of each: throughput and p99 of whole
    requests at every concurrency both ran and at the headline one, and for streams the time
    to first chunk (p50) at the streamed concurrency nearest the headline one."""
    by_clients = []
    for theirs in peer["closed_loop"]:
        ours = next((r for r in bus["closed_loop"] if r["clients"] == theirs["clients"]), None)
        if ours is not None:
            by_clients.append(
                {
                    "clients": theirs["clients"],
                    "throughput_ratio": ratio(ours["throughput_rps"], theirs["throughput_rps"]),
                    "p99_ratio": ratio(ours["p99_ms"], theirs["p99_ms"]),
                }
            )
    result: dict[str, Any] = {**(row_at(by_clients, HEADLINE_CLIENTS) if by_clients else {})}
    if bus.get("closed_loop_stream") and peer.get("closed_loop_stream"):
        ours = row_at(bus["closed_loop_stream"], HEADLINE_CLIENTS)
        theirs = row_at(peer["closed_loop_stream"], HEADLINE_CLIENTS)
        result["ttfc_p50_ratio"] = ratio(ours.get("ttfc_p50_ms"), theirs.get("ttfc_p50_ms"))
        result["ttfc_clients"] = ours["clients"]
    return {**result, "by_clients": by_clients, **peer}
