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
    per_size: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Time consecutive batches of each size, one batch after the other.

    Each size runs `per_size` items (default: all of `items`), rounded up to whole batches,
    cycling through `items` from the first; a smaller `per_size` is what keeps `--quick`
    quick (then a size-8 row runs 8 items and a size-1 row fewer, so the rows share their
    first items but not all of them).

    Returns {"<size>": {"per_item_s", "total_s", "items", "speedup", ...}}. Speedup is
    per-item time at sizes[0] over that at each size. One untimed warm-up batch (of the
    largest size, or of `warmup_items`) runs first: first-call allocations are not batching.
    `before(size)` runs before a size is timed (the bus pins its batch size there), and
    `after(size)` adds fields to its row.
    """
    if not items:
        raise ValueError("a batch table needs items")
    per_size = len(items) if per_size is None else per_size
    warmup = max(sizes) if warmup_items is None else warmup_items
    if warmup:
        run(_cycle(items, 0, warmup))
        tick(warmup)
    table: dict[str, dict[str, Any]] = {}
    for size in sizes:
        if before is not None:
            before(size)
        count = -(-per_size // size) * size
        total = 0.0
        for start in range(0, count, size):
            chunk = _cycle(items, start, size)
            began = time.perf_counter()
            run(chunk)
            elapsed = time.perf_counter() - began
            total += elapsed
            tick(len(chunk))
        table[str(size)] = {"per_item_s": total / count, "total_s": total, "items": count}
        if after is not None:
            table[str(size)].update(after(size))
    base = table[str(sizes[0])]["per_item_s"]
    for row in table.values():
        row["speedup"] = base / row["per_item_s"]
    return table


def table_items(sizes: Sequence[int], per_size: int) -> int:
    """How many items `batch_table` runs in all (the progress bar counts them)."""
    return sum(-(-per_size // size) * size for size in sizes)


def _cycle(items: Sequence[dict[str, Any]], start: int, count: int) -> list[dict[str, Any]]:
    return [items[(start + i) % len(items)] for i in range(count)]


def best_throughput(table: dict[str, dict[str, Any]]) -> tuple[int, float]:
    """(batch size, items per second) of the fastest row of a batch table."""
    size, row = min(table.items(), key=lambda kv: kv[1]["per_item_s"])
    return int(size), 1.0 / row["per_item_s"]
