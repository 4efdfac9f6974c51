"""The measurements of one run, per task: what runs against the bus, the peer and the raw
engine, in which order, with which load. `scripts/test_batch_processing.py` strings these
together and assembles the report.

Order on the bus, per task: the batch table with pinned sizes; then the comparison of the
adaptive policy with pinned sizes at 8 clients, interleaved in rounds (each round runs
every pinned size and the adaptive policy once, each round in a rotated order, so that a
change in machine load during the run hits them alike); then, back on the configured policy,
single requests for the overhead, each paired with the same request on the raw engine in
process, the closed-loop sweep of whole requests (its 8-client row is the comparison's
adaptive row), for TTS the sweep of streams, and the open loop. Throughput is only ever
compared between whole requests.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import numpy as np

from bench import engine as engine_bench
from bench.engine import BatchRunner, table_items
from bench.load import Connection, Sample, Tick, closed_loop, closed_loop_samples, open_loop, summarize
from bench.stats import Rate, closest, histogram_delta, latency_summary, poisson_schedule, ratio
from bench.workload import Mode, Task, Workload
from model_manager.config import BatchConfig
from model_manager.engines.base import Engine

BATCH_SIZES = (1, 2, 4, 8)
#: The concurrency the headline ratios are quoted at (bus vs raw, adaptive vs fixed, peer).
HEADLINE_CLIENTS = 8


@dataclass(frozen=True)
class Plan:
    """How much of everything one run does; the progress bar's total comes from here too."""

    clips: int  # distinct items the workload cycles through
    table_per_size: int  # items each batch size runs in the batch tables (whole batches)
    warmup_items: int  # the untimed batch before each batch table
    singles: int  # single requests, raw and through the bus, for the overhead
    levels: tuple[int, ...]  # closed-loop clients
    stream_levels: tuple[int, ...]  # closed-loop clients of the TTS stream sweep
    min_requests: int  # requests per closed-loop level at least...
    per_client: int  # ...or this many per client, if more
    arrivals: int  # open-loop requests per rate
    rates: tuple[Rate, ...]
    compared_sizes: tuple[int, ...]  # pinned batch sizes the adaptive policy is compared with
    rounds: int  # interleaved rounds of that comparison
    compared_requests: int  # requests per configuration and round

    def requests(self, clients: int) -> int:
        return max(self.min_requests, clients * self.per_client)

    def units(self, peer: bool, streams: bool = False) -> dict[str, int]:
        """Requests each stage of one task sends (the progress bar's units); `streams`: the
        task is also swept with streams (TTS)."""
        table = self.warmup_items + table_items(BATCH_SIZES, self.table_per_size)
        streamed = sum(self.requests(c) for c in self.stream_levels) if streams else 0
        compared = self.rounds * (len(self.compared_sizes) + 1) * self.compared_requests
        # The bus's headline row comes from the comparison, not from a sweep of its own.
        bus_sweep = sum(self.requests(c) for c in self.levels if c != HEADLINE_CLIENTS)
        peer_sweep = sum(self.requests(c) for c in self.levels)
        return {
            "engine": table,
            "bus": table + compared + self.singles + bus_sweep + streamed + self.arrivals * len(self.rates),
            "peer": self.warmup_items + peer_sweep + streamed if peer else 0,
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
    system: System,
    workload: Workload,
    plan: Plan,
    tick: Tick,
    warm: bool = False,
    measured: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """The closed-loop sweep every system gets: whole requests ("closed_loop"), and for TTS
    also streams ("closed_loop_stream", with time to first chunk). `warm`: first send
    `plan.warmup_items` requests at once, untimed, to a system that has not served yet (the
    bus has, by then: its batch table ran first), so first-call costs are not counted.
    `measured`: rows of whole requests already measured (the bus's comparison at 8 clients);
    their levels are not run again."""
    if warm and plan.warmup_items:
        n = plan.warmup_items
        closed_loop(lambda: system.connection(workload, "single"), workload, n, n, tick)
    done = {row["clients"] for row in measured}
    levels = [c for c in plan.levels if c not in done]
    rows = [*sweep(system, workload, "single", levels, plan, tick), *measured]
    stage = {"closed_loop": sorted(rows, key=lambda row: row["clients"])}
    if "stream" in workload.modes:
        stage["closed_loop_stream"] = sweep(system, workload, "stream", plan.stream_levels, plan, tick)
    return stage


def engine_stage(
    engine: Engine, workload: Workload, plan: Plan, tick: Tick
) -> tuple[dict[str, Any], BatchRunner]:
    """Seed 003's table on the raw engine (loaded in this process). Returns the entry and the
    engine's runner, kept for the paired single-request latencies of `bus_stage`."""
    raw = engine_bench.raw_runner(engine)
    table = engine_bench.batch_table(
        raw, workload.items, BATCH_SIZES, tick, warmup_items=plan.warmup_items, per_size=plan.table_per_size
    )
    size, rps = engine_bench.best_throughput(table)
    entry = {
        "model": engine.name,
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
    machine load during the run moves both sides alike and cancels out of the difference.
    Where the system reports its engine time per request, also the system's time outside
    the engine for each request ("bus_outside_engine_ms")."""
    raw_s: list[float] = []
    system_s: list[float] = []
    outside_s: list[float] = []
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
                if outcome.engine_s is not None:
                    outside_s.append(outcome.end - began - outcome.engine_s)
            else:
                errors[str(outcome.error)] += 1
        tick(1)
    connection.close()
    return {
        "raw_single_ms": latency_summary(raw_s),
        "bus_single_ms": latency_summary(system_s),
        "bus_outside_engine_ms": latency_summary(outside_s),
        "single_errors": dict(errors),
    }


def compare_fixed_and_adaptive(
    bus: Any, workload: Workload, plan: Plan, batching: BatchConfig, tick: Tick
) -> dict[str, Any]:
    """Closed loop at HEADLINE_CLIENTS with each of `plan.compared_sizes` pinned and with the
    configured (adaptive) policy, interleaved in `plan.rounds` rounds, each round in a
    rotated order. Each configuration's row summarizes all its rounds (throughput over the
    summed wall times) and keeps each round's successes and wall time ("by_round"), from
    which `ratios` picks the best fixed size without selection bias. The bus is left on
    the configured policy."""
    task = workload.task
    configurations = [str(size) for size in plan.compared_sizes] + ["adaptive"]
    samples: dict[str, list[Sample]] = {name: [] for name in configurations}
    by_round: dict[str, list[dict[str, float]]] = {name: [] for name in configurations}
    formed: dict[str, Counter[str]] = {name: Counter() for name in configurations}
    clients = HEADLINE_CLIENTS
    shift = -(-len(configurations) // max(1, plan.rounds))
    try:
        for round_index in range(plan.rounds):
            turn = (round_index * shift) % len(configurations)
            for name in configurations[turn:] + configurations[:turn]:
                if name == "adaptive":
                    bus.restore(task, batching)
                else:
                    bus.pin_batch_size(task, int(name))
                before = bus.histogram(task)
                connect = partial(bus.connection, workload, "single")
                got, wall = closed_loop_samples(connect, workload, clients, plan.compared_requests, tick)
                samples[name] += got
                by_round[name].append({"succeeded": sum(s.outcome.ok for s in got), "wall_s": wall})
                formed[name].update(histogram_delta(before, bus.histogram(task)))
    finally:
        bus.restore(task, batching)

    def row(name: str) -> dict[str, Any]:
        wall_s = sum(r["wall_s"] for r in by_round[name])
        sizes = dict(sorted(formed[name].items(), key=lambda kv: int(kv[0])))
        return {"clients": clients, "mode": "single", **summarize(samples[name], wall_s),
                "batch_sizes": sizes, "by_round": by_round[name]}

    return {
        "clients": clients,
        "rounds": plan.rounds,
        "fixed": {name: row(name) for name in configurations if name != "adaptive"},
        "adaptive": row("adaptive"),
    }


def adaptive_vs_best_fixed(compared: dict[str, Any]) -> tuple[float | None, int, str]:
    """(adaptive throughput over the best pinned size's, that size, how it was picked).

    Picking the best of several noisy rows and comparing with it in the same data favours
    the pinned side (the largest of four noisy equals is above their true mean). With two
    rounds or more, each round's best size is therefore picked from the other rounds and
    measured in this one ("cross-fitted"); with one round there is no other choice."""
    fixed = compared["fixed"]
    adaptive = compared["adaptive"]["by_round"]

    def rate(rounds: Sequence[dict[str, float]]) -> float:
        wall = sum(r["wall_s"] for r in rounds)
        return sum(r["succeeded"] for r in rounds) / wall if wall > 0 else 0.0

    overall = max(fixed, key=lambda size: rate(fixed[size]["by_round"]))
    count = len(adaptive)
    if count < 2:
        return ratio(rate(adaptive), rate(fixed[overall]["by_round"])), int(overall), "same round"

    def rate_without(size: str, held_out: int) -> float:
        rounds = fixed[size]["by_round"]
        return rate(rounds[:held_out] + rounds[held_out + 1 :])

    picked = [fixed[max(fixed, key=partial(rate_without, held_out=k))]["by_round"][k] for k in range(count)]
    return ratio(rate(adaptive), rate(picked)), int(overall), "cross-fitted over rounds"


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
            workload.items,
            BATCH_SIZES,
            tick,
            pin,
            formed,
            warmup_items=plan.warmup_items,
            per_size=plan.table_per_size,
        )
    finally:
        bus.restore(task, batching)
    compared = compare_fixed_and_adaptive(bus, workload, plan, batching, tick)
    singles = paired_singles(raw, bus.connection(workload, "single"), workload, plan.singles, tick)
    loads = load_stage(bus, workload, plan, tick, measured=[compared["adaptive"]])
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
        "fixed_vs_adaptive": compared,
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
    compared = entry["fixed_vs_adaptive"]
    adaptive_ratio, compared["best_fixed_size"], compared["best_fixed_selection"] = adaptive_vs_best_fixed(
        compared
    )
    # The bus's overhead: its latency minus the engine's time for that very request, which
    # the bus reports per request. The paired latencies (bus minus the raw engine in this
    # process) are kept beside it: on a small CPU the two processes' engines do not run
    # alike (threads, allocator state), which the paired difference cannot tell apart.
    outside = entry.get("bus_outside_engine_ms") or {}
    paired = {
        f"paired_difference_ms_{q}": None if bus[f"{q}_ms"] is None else bus[f"{q}_ms"] - raw[f"{q}_ms"]
        for q in ("p50", "p99")
    }
    overhead = {
        f"bus_overhead_ms_{q}": _first_number(outside.get(f"{q}_ms"), paired[f"paired_difference_ms_{q}"])
        for q in ("p50", "p99")
    }
    return {
        **overhead,
        **paired,
        "bus_vs_raw_throughput": ratio(headline["throughput_rps"], entry["best_raw"]["throughput_rps"]),
        "adaptive_vs_best_fixed": adaptive_ratio,
    }


def _first_number(*values: float | None) -> float | None:
    return next((v for v in values if v is not None), None)


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
