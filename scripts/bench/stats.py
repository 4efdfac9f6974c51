"""Pure arithmetic of the benchmark: percentiles, arrival schedules, histogram deltas, rates.

No clocks, threads, sockets or models here, so that all of it is unit-tested
(tests/unit/test_benchmark_logic.py) and the measuring code stays small.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

PERCENTILES = (50, 95, 99)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation (numpy's default), or None
    when there are no values: a missing number must never look like a measured zero."""
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    if len(values) == 0:
        return None
    return float(np.percentile(np.asarray(values, dtype=float), q))


def latency_summary(seconds: Sequence[float], prefix: str = "") -> dict[str, float | None]:
    """{"<prefix>p50_ms", "<prefix>p95_ms", "<prefix>p99_ms"}: percentiles of `seconds`, in ms."""
    out: dict[str, float | None] = {}
    for q in PERCENTILES:
        value = percentile(seconds, q)
        out[f"{prefix}p{q}_ms"] = None if value is None else value * 1000.0
    return out


def poisson_schedule(rate: float, count: int, rng: np.random.Generator) -> list[float]:
    """Arrival offsets in seconds (from the start of the run) of `count` requests of a
    Poisson process with `rate` arrivals per second: cumulative sums of exponential gaps.

    Strictly increasing and reproducible for a seeded `rng`. The first arrival is one gap
    after the start, not at 0, as in a process already running when we start to watch.
    """
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"rate must be a positive number of requests per second, got {rate}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    gaps = rng.exponential(1.0 / rate, size=count)
    # An exponential draw can be 0.0 in floating point; a zero gap would make two arrivals
    # simultaneous, which a Poisson process never has.
    gaps = np.maximum(gaps, np.finfo(float).tiny)
    return [float(t) for t in np.cumsum(gaps)]


def histogram_delta(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    """What `after` counted beyond `before`: the batches formed between two `stats` calls.

    Keys are batch sizes as strings (as `stats` sends them); sizes that did not grow are
    left out; the result is sorted by size. A counter that went down means the server was
    restarted between the calls, and the delta would be a lie: ValueError.
    """
    delta: dict[str, int] = {}
    for size in sorted(set(before) | set(after), key=int):
        grown = int(after.get(size, 0)) - int(before.get(size, 0))
        if grown < 0:
            raise ValueError(f"batch size {size} counter went down ({before[size]} -> {after.get(size, 0)})")
        if grown:
            delta[size] = grown
    return delta


def mean_batch_size(histogram: Mapping[str, int]) -> float | None:
    """Requests per batch over a histogram {size: batches}, or None for no batches."""
    batches = sum(histogram.values())
    if not batches:
        return None
    return sum(int(size) * n for size, n in histogram.items()) / batches


@dataclass(frozen=True)
class Rate:
    """An open-loop arrival rate: absolute (requests/s) or relative to a measured capacity."""

    value: float
    relative: bool = False

    def resolve(self, capacity_rps: float | None) -> float:
        """Requests per second. A relative rate needs the capacity (ValueError without one)."""
        if not self.relative:
            return self.value
        if capacity_rps is None or not capacity_rps > 0:
            raise ValueError(f"rate {self} is relative, but no capacity was measured")
        return self.value * capacity_rps

    def __str__(self) -> str:
        return f"{self.value:g}x" if self.relative else f"{self.value:g}/s"


def parse_rates(text: str) -> list[Rate]:
    """ "2,0.5x" -> [2 requests/s, half the measured capacity]. ValueError on anything else:
    a typo must stop the run before minutes of measuring, not after."""
    rates = []
    for part in text.split(","):
        part = part.strip()
        relative = part.endswith("x")
        number = part[:-1] if relative else part.removesuffix("/s")
        try:
            value = float(number)
        except ValueError:
            raise ValueError(
                f"not a rate: {part!r} (use requests/s like 2.5, or a capacity fraction like 0.5x)"
            ) from None
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"a rate must be positive, got {part!r}")
        rates.append(Rate(value, relative))
    return rates


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing or the denominator is not
    positive: a ratio against nothing is not a number we can report."""
    if numerator is None or denominator is None or not denominator > 0:
        return None
    if not (math.isfinite(numerator) and math.isfinite(denominator)):
        return None
    return numerator / denominator


def closest(values: Iterable[int], target: int) -> int:
    """The value nearest `target` (the larger one on a tie): which measured concurrency to
    quote when the exact one was not run."""
    return min(values, key=lambda v: (abs(v - target), -v))
