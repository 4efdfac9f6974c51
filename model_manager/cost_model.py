"""How big a batch should be, learned from the batches the engine actually ran.

Whether batching pays depends on the engine and the device: on a 2-core CPU a batch of 8
makes Kokoro about twice as slow per item while CTranslate2 Whisper stays flat, and on a GPU
batching is worth several times. So no fixed `max_batch_size` is right everywhere. This
model measures instead of assuming.

Contract
--------
- `observe(size, units, seconds)` records one finished batch: how many requests it held,
  their total cost units (audio seconds for STT, phoneme tokens for TTS) and how long the
  engine took. Only the last `window` batches of each size count, so the estimate follows
  a device whose speed changes.
- `choose(min_size, max_size)` returns the batch size in [min_size, max_size] with the best
  measured throughput (cost units per second), and why. Sizes whose throughput is within
  `tolerance` of the best count as equal, and the smallest of them wins: it gives the same
  throughput with less latency. Until each candidate size (powers of two up to max_size,
  and max_size itself) has `min_observations` batches, the smallest unexplored one is chosen,
  so the model explores before it exploits. Every `reexplore_every` choices it tries a
  neighbour of the best size once, so a stale estimate gets corrected.
- `warm_up_sizes(max_size)` is what a start-up warm-up measures, in order: every candidate
  `min_observations` times. After it `choose` exploits at once: a burst of requests right
  after start-up must not run as batches of 1, 2, 4, 8 in turn while the rest queue.
- `for_bucket()` is a model for another kind of request of the same engine (Whisper: another
  window length): the same settings, and this model's throughput by size as its `prior`.
  A model with a prior does not explore: a size it has not measured is estimated as the
  prior's throughput there, scaled by how this kind compares with the prior's on the sizes
  both measured. The kinds differ in cost per unit (a decoder step costs the same whatever
  the window), rarely in which batch size pays, and one size's measurement fixes the scale.
- `predict(size, units)` estimates the seconds a batch would take (None if unknown), and
  `largest_within(seconds, units_per_item, max_size)` is the largest size predicted to finish
  within `seconds`: the caller uses it to keep queued requests within their deadlines.

Pure: no clocks, threads or I/O.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class SizeChoice:
    size: int
    reason: str


class CostModel:
    def __init__(
        self, window: int = 20, min_observations: int = 2, tolerance: float = 0.05,
        reexplore_every: int = 200, prior: Mapping[int, float] | None = None,
    ) -> None:
        self.window = window
        self.min_observations = min_observations
        self.tolerance = tolerance
        self.reexplore_every = reexplore_every
        #: Throughput by size of a related kind of request (see for_bucket); empty: none.
        self.prior: dict[int, float] = {s: r for s, r in (prior or {}).items() if r > 0}
        self._batches: dict[int, deque[tuple[float, float]]] = {}
        self._choices = 0

    def for_bucket(self) -> CostModel:
        """A model for another kind of request of the same engine, starting from this one's
        measurements (its prior where it has none)."""
        measured = {s: r for s in self._batches if (r := self.throughput(s)) is not None}
        return CostModel(self.window, self.min_observations, self.tolerance, self.reexplore_every,
                         prior=measured or self.prior)

    def warm_up_sizes(self, max_size: int) -> list[int]:
        """Every candidate size up to `max_size`, `min_observations` times: rounds up and down
        in turn, so a machine whose speed drifts during the warm-up weighs on every size alike."""
        sizes = self.candidates(1, max_size)
        return [s for r in range(self.min_observations) for s in (sizes if r % 2 == 0 else sizes[::-1])]

    def observe(self, size: int, units: float, seconds: float) -> None:
        if size < 1 or seconds <= 0 or units <= 0:
            return  # nothing to learn from an empty or instantaneous batch
        self._batches.setdefault(size, deque(maxlen=self.window)).append((units, seconds))

    def throughput(self, size: int) -> float | None:
        """Cost units per second at this batch size, or None if never observed."""
        batches = self._batches.get(size)
        if not batches:
            return None
        return sum(u for u, _ in batches) / sum(s for _, s in batches)

    def observations(self, size: int) -> int:
        return len(self._batches.get(size, ()))

    def predict(self, size: int, units: float) -> float | None:
        rate = self.throughput(size)
        if rate is None:
            # Assume no gain from batching for an unobserved size: a safe (slow) guess.
            known = [s for s in self._batches if s <= size]
            if not known:
                return None
            rate = self.throughput(max(known))
        return units / rate  # type: ignore[operator]

    def largest_within(self, seconds: float, units_per_item: float, max_size: int) -> int:
        for size in range(max_size, 1, -1):
            predicted = self.predict(size, units_per_item * size)
            if predicted is None or predicted <= seconds:
                return size
        return 1

    @staticmethod
    def candidates(min_size: int, max_size: int) -> list[int]:
        sizes = {max_size, min_size}
        power = 1
        while power < max_size:
            if power >= min_size:
                sizes.add(power)
            power *= 2
        return sorted(sizes)

    def estimates(self, min_size: int, max_size: int) -> dict[int, float]:
        """Throughput by size in [min_size, max_size]: measured, else the prior's, scaled."""
        measured = {s: r for s in range(min_size, max_size + 1) if (r := self.throughput(s)) is not None}
        shared = [s for s in measured if s in self.prior]
        # Geometric mean of the ratios: one odd size does not drag the scale far.
        scale = math.exp(sum(math.log(measured[s] / self.prior[s]) for s in shared) / len(shared)) \
            if shared else 1.0
        estimated = {s: r * scale for s, r in self.prior.items() if min_size <= s <= max_size}
        return {**estimated, **measured}

    def choose(self, min_size: int, max_size: int) -> SizeChoice:
        self._choices += 1
        candidates = self.candidates(min_size, max_size)
        rates = self.estimates(min_size, max_size)
        for size in candidates:
            if (self.observations(size) < self.min_observations
                    and not (self.prior and rates)):  # with a prior, estimates stand in
                return SizeChoice(
                    size,
                    f"exploring: size {size} has {self.observations(size)} of "
                    f"{self.min_observations} measured batches",
                )
        best_rate = max(rates.values())
        best = min(s for s, r in rates.items() if r >= best_rate * (1 - self.tolerance))
        if self.reexplore_every and self._choices % self.reexplore_every == 0:
            neighbour = next((s for s in candidates if s > best), None) or next(
                (s for s in reversed(candidates) if s < best), best
            )
            return SizeChoice(neighbour, f"re-checking size {neighbour} next to the best, {best}")
        table = ", ".join(f"{s}: {r:.2f}/s" for s, r in sorted(rates.items()))
        how = "measured" if all(self.observations(s) for s in rates) else "measured or estimated"
        return SizeChoice(best, f"size {best} has the best {how} throughput (units/s by size: {table})")

    def snapshot(self) -> dict[str, float]:
        return {str(s): round(r, 3) for s in sorted(self._batches) if (r := self.throughput(s)) is not None}
