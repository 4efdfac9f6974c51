"""The first batches after start-up: a burst of short commands at a bus that just warmed up.

A fresh bus (the configured STT model alone, start-up warm-up on) gets CLIENTS clients at
once, each sending its next command as soon as the last is answered. From the replies'
`timing` (batch size and compute time, shared by a batch's requests) the batches that ran
are rebuilt in order; the report lists those that started within the first `span_s`
seconds, and each window length's batch size and the cost model's reason at the end. A cost
model that had to explore would show batches of 1, 2, 4, 8 in turn while requests queue.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

from bench.load import Outcome, closed_loop_samples
from bench.workload import Workload
from model_manager.config import ModelSpec

CLIENTS = 16
SPAN_S = 30.0


@dataclass(frozen=True)
class SeenBatch:
    start_s: float  # from the burst's first send, as the client sees it
    size: int
    compute_ms: float


def burst_stage(spec: ModelSpec, items: list[dict[str, Any]], requests: int, span_s: float = SPAN_S
                ) -> dict[str, Any]:
    from bench.windows import TextConnection, WindowBus

    replies: list[tuple[float, int, float]] = []  # (end, batch size, compute ms)
    lock = threading.Lock()

    class Recording(TextConnection):
        def call(self, item: dict[str, Any]) -> Outcome:
            outcome = super().call(item)
            if outcome.ok and self.batch_size and self.compute_ms is not None:
                with lock:
                    replies.append((outcome.end, self.batch_size, self.compute_ms))
            return outcome

    bus = WindowBus(spec, warmup=True, floors=())
    try:
        began = time.perf_counter()
        connect = partial(Recording, bus.address, bus.default, [], lock)
        got, wall = closed_loop_samples(connect, Workload("stt", tuple(items)), CLIENTS, requests,
                                        lambda _n: None)
        stats = bus.stats(bus.default)
    finally:
        bus.stop()
    batches = rebuild(replies, began)
    first = [b for b in batches if b.start_s <= span_s]
    return {
        "clients": CLIENTS,
        "requests": requests,
        "wall_s": round(wall, 2),
        "errors": sum(not s.outcome.ok for s in got),
        "span_s": span_s,
        "first_batches": [{"start_s": round(b.start_s, 2), "size": b.size,
                           "compute_ms": round(b.compute_ms, 1)} for b in first],
        "by_window": {window: {"chosen_batch_size": entry["chosen_batch_size"],
                               "throughput_by_size": entry["throughput_by_size"]}
                      for window, entry in (stats.get("buckets") or {}).items()},
        "choice_reason": stats.get("choice_reason"),
    }


def rebuild(replies: list[tuple[float, int, float]], began: float) -> list[SeenBatch]:
    """Batches from replies: the requests of one batch share its size and compute time (to
    the microsecond) and end within a few ms of each other; ordered by start."""
    groups: dict[tuple[int, float], list[float]] = {}
    for end, size, compute_ms in replies:
        groups.setdefault((size, compute_ms), []).append(end)
    batches = [SeenBatch(min(ends) - began - compute_ms / 1000, size, compute_ms)
               for (size, compute_ms), ends in groups.items()]
    return sorted(batches, key=lambda b: b.start_s)


def burst_table(report: dict[str, Any]) -> str:
    first = report["first_batches"]
    sizes = ", ".join(str(b["size"]) for b in first)
    lines = [f"A burst right after start-up (warm-up on): {report['clients']} clients at once, "
             f"{report['requests']} commands in {report['wall_s']} s, {report['errors']} errors",
             f"  batch sizes in order, the {len(first)} batches that started within {report['span_s']:g} s: "
             f"{sizes}"]
    if first:
        timed = ", ".join(f"{b['start_s']:.2f}: {b['size']}" for b in first[:12])
        lines.append(f"  the first 12 (start s: size): {timed}")
    for window, entry in sorted(report["by_window"].items(), key=lambda kv: float(kv[0])):
        lines.append(f"  {float(window):g} s windows: batch size {entry['chosen_batch_size']}, "
                     f"units/s by size {entry['throughput_by_size']}")
    lines.append(f"  last choice: {report['choice_reason']}")
    return "\n".join(lines)
