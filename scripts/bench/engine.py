"""Seed 003's table: the same items run in consecutive batches of 1, 2, 4 and 8.

`batch_table` times any batch runner, so the raw engine in process (`raw_runner`) and the
bus (`bus.batch_runner`) are measured by the same loop and printed in the same table.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from bench.load import Tick
from model_manager.config import ModelSpec
from model_manager.engines.base import Engine
from model_manager.engines.registry import build_engine

#: Runs one batch of workload items to completion; raises if any item failed, because a
#: table of timings that include failures would compare unequal work.
BatchRunner = Callable[[Sequence[dict[str, Any]]], None]


def load_engine(spec: ModelSpec) -> Engine:
    """The engine the bus would build for `spec`, loaded in this process."""
    return build_engine(spec)


def raw_runner(engine: Engine) -> BatchRunner:
    """One `run_batch` call per batch, `prepare` included: the bus prepares every request
    too, so leaving it out would charge the bus for work the raw engine also has to do."""

    def run(items: Sequence[dict[str, Any]]) -> None:
        results = engine.run_batch([engine.prepare(dict(item)) for item in items])
        if len(results) != len(items):
            raise RuntimeError(f"{engine.name}: {len(results)} results for {len(items)} requests")

    return run


def batch_table(
    run: BatchRunner,
    items: Sequence[dict[str, Any]],
    sizes: Sequence[int],
    tick: Tick,
    before: Callable[[int], None] | None = None,
    after: Callable[[int], dict[str, Any]] | None = None,
    warmup_items: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Time `items` in consecutive batches of each size, one batch after the other.

    Returns {"<size>": {"per_item_s", "total_s", "speedup", ...}}. Speedup is per-item time at sizes[0]
    over that at each size. One untimed warm-up batch (of the largest size, or of
    `warmup_items`) runs first: first-call allocations are not batching. `before(size)` runs
    before a size is timed (the bus pins its batch size there), and `after(size)` adds
    fields to its row. len(items) must be a multiple of every size, so that every row runs
    the same work.
    """
    if any(len(items) % size for size in sizes):
        raise ValueError(f"{len(items)} items do not split evenly into batches of {list(sizes)}")
    warmup = max(sizes) if warmup_items is None else warmup_items
    if warmup:
        run(items[:warmup])
        tick(warmup)
    table: dict[str, dict[str, Any]] = {}
    for size in sizes:
        if before is not None:
            before(size)
        total = 0.0
        for start in range(0, len(items), size):
            chunk = items[start : start + size]
            began = time.perf_counter()
            run(chunk)
            elapsed = time.perf_counter() - began
            total += elapsed
            tick(len(chunk))
        table[str(size)] = {"per_item_s": total / len(items), "total_s": total}
        if after is not None:
            table[str(size)].update(after(size))
    base = table[str(sizes[0])]["per_item_s"]
    for row in table.values():
        row["speedup"] = base / row["per_item_s"]
    return table


def best_throughput(table: dict[str, dict[str, Any]]) -> tuple[int, float]:
    """(batch size, items per second) of the fastest row of a batch table."""
    size, row = min(table.items(), key=lambda kv: kv[1]["per_item_s"])
    return int(size), 1.0 / row["per_item_s"]
