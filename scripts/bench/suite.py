"""The measurements of one run, per task: what runs against the bus, the peer and the raw
engine, in which order, with which load. `scripts/test_batch_processing.py` strings these
together and assembles the report.

Order on the bus, per task: the batch table with pinned sizes; closed loop at 8 clients
with each pinned size, then (back to the configured, adaptive policy) single requests for
the overhead, the closed-loop sweep (its 8-client row is the adaptive one) and the open
loop. The fixed and adaptive rows at 8 clients thus run back to back on the same bus.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from bench import engine as engine_bench
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
    levels: tuple[int, ...]  # closed-loop clients
    min_requests: int  # requests per closed-loop level at least...
    per_client: int  # ...or this many per client, if more
    arrivals: int  # open-loop requests per rate
    rates: tuple[Rate, ...]

    def requests(self, clients: int) -> int:
        return max(self.min_requests, clients * self.per_client)

    def units(self, peer: bool) -> dict[str, int]:
        """Requests each stage of one task sends (the progress bar's units)."""
        table = self.warmup_items + self.clips * len(BATCH_SIZES)
        sweep = sum(self.requests(c) for c in self.levels)
        return {
            "engine": table,
            "bus": table
            + len(BATCH_SIZES) * self.requests(HEADLINE_CLIENTS)
            + self.clips
            + sweep
            + self.arrivals * len(self.rates),
            "peer": sweep if peer else 0,
        }


class System(Protocol):
    """What the load stages need of a served system (bus.Bus and peer.Peer)."""

    def connection(self, workload: Workload, mode: Mode) -> Connection: ...

    def histogram(self, task: Task) -> dict[str, int]: ...


def sweep(
    system: System, workload: Workload, levels: Sequence[int], plan: Plan, tick: Tick
) -> list[dict[str, Any]]:
    """Closed loop at each number of clients, with the batch sizes the system formed."""
    rows = []
    for clients in levels:
        before = system.histogram(workload.task)
        row = closed_loop(
            lambda: system.connection(workload, workload.load_mode),
            workload,
            clients,
            plan.requests(clients),
            tick,
        )
        row["batch_sizes"] = histogram_delta(before, system.histogram(workload.task))
        rows.append(row)
    return rows


def engine_stage(spec: Any, workload: Workload, plan: Plan, tick: Tick) -> dict[str, Any]:
    """Seed 003's table on the raw engine, in this process."""
    engine = engine_bench.load_engine(spec)
    table, singles = engine_bench.batch_table(
        engine_bench.raw_runner(engine),
        workload.items[: plan.clips],
        BATCH_SIZES,
        tick,
        warmup_items=plan.warmup_items,
    )
    size, rps = engine_bench.best_throughput(table)
    return {
        "model": spec.name,
        "clips": plan.clips,
        "engine_batch": table,
        "raw_single_ms": latency_summary(singles),
        "best_raw": {"batch_size": size, "throughput_rps": rps},
    }


def bus_stage(
    bus: Any, workload: Workload, plan: Plan, batching: BatchConfig, seed: int, tick: Tick
) -> dict[str, Any]:
    """Everything measured through the bus for one task (see the module docstring for the order).
    `bus` is a bench.bus.Bus; the result holds raw numbers, the ratios come in `ratios`."""
    from bench.bus import batch_runner

    task = workload.task
    marks: dict[int, dict[str, int]] = {}

    def pin(size: int) -> None:
        bus.pin_batch_size(task, size)
        marks[size] = bus.histogram(task)

    def formed(size: int) -> dict[str, Any]:
        return {"batch_sizes": histogram_delta(marks[size], bus.histogram(task))}

    try:
        bus_table, _ = engine_bench.batch_table(
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
            fixed[str(size)] = sweep(bus, workload, [HEADLINE_CLIENTS], plan, tick)[0]
    finally:
        bus.restore(task, batching)
    single = closed_loop(lambda: bus.connection(workload, "single"), workload, 1, plan.clips, tick)
    loads = sweep(bus, workload, plan.levels, plan, tick)
    capacity = max((r["throughput_rps"] or 0.0 for r in loads), default=0.0)
    rng = np.random.default_rng(seed)
    opened = []
    for rate in plan.rates:
        rps = rate.resolve(capacity)
        before = bus.histogram(task)
        row = open_loop(
            lambda: bus.connection(workload, workload.load_mode),
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
        "bus_single_ms": {k: single[k] for k in ("p50_ms", "p95_ms", "p99_ms")},
        "fixed_vs_adaptive": {"clients": HEADLINE_CLIENTS, "fixed": fixed},
        "closed_loop": loads,
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


def peer_ratios(bus_rows: Sequence[dict[str, Any]], peer_rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """voicebus over peer at each concurrency both ran, and at the headline one."""
    by_clients = []
    for peer in peer_rows:
        bus = next((r for r in bus_rows if r["clients"] == peer["clients"]), None)
        if bus is not None:
            by_clients.append(
                {
                    "clients": peer["clients"],
                    "throughput_ratio": ratio(bus["throughput_rps"], peer["throughput_rps"]),
                    "p99_ratio": ratio(bus["p99_ms"], peer["p99_ms"]),
                }
            )
    headline = row_at(by_clients, HEADLINE_CLIENTS) if by_clients else {}
    return {**headline, "by_clients": by_clients, "closed_loop": list(peer_rows)}
