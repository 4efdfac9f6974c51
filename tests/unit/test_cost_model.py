"""The batch-size policy on synthetic cost curves: no clocks, sleeps or models."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from model_manager.cost_model import CostModel


def settle(
    latency: Callable[[int], float], max_size: int = 8, rounds: int = 150, noise: float = 0.0
) -> list[int]:
    """Run a saturated queue against `latency(size)`; return the sizes chosen in the last 20 rounds."""
    rng = random.Random(0)
    model = CostModel()
    chosen = []
    for _ in range(rounds):
        size = model.choose(1, max_size).size
        seconds = latency(size) * (1 + rng.uniform(-noise, noise))
        model.observe(size, units=float(size), seconds=seconds)
        chosen.append(size)
    return chosen[-20:]


def test_converges_to_one_where_batching_hurts():
    # Kokoro on this 2-core CPU: per-item time grows with the batch (8 items ~1.8x slower each).
    chosen = settle(lambda n: n * (1 + 0.12 * (n - 1)), noise=0.05)
    assert chosen.count(1) >= 19


def test_converges_to_the_largest_size_where_batching_helps():
    # A GPU: a fixed launch cost amortised over the batch.
    chosen = settle(lambda n: 1.0 + 0.1 * n, noise=0.05)
    assert chosen.count(8) >= 19


def test_finds_an_interior_optimum():
    # Amortisation up to 4, then memory pressure makes larger batches slow.
    chosen = settle(lambda n: 1.0 + 0.1 * n if n <= 4 else 2.0 * n)
    assert chosen.count(4) >= 19


def test_equal_throughput_prefers_the_smaller_batch():
    # CTranslate2 Whisper on this CPU: flat per item; a bigger batch only adds latency.
    chosen = settle(lambda n: float(n), noise=0.02)
    assert chosen.count(1) >= 19


def test_explores_every_candidate_before_exploiting():
    model = CostModel(min_observations=1)
    sizes = []
    for _ in range(4):
        size = model.choose(1, 8).size
        sizes.append(size)
        model.observe(size, float(size), 1.0)
    assert sizes == [1, 2, 4, 8]
    assert "best measured throughput" in model.choose(1, 8).reason


def test_choice_stays_within_the_configured_range():
    model = CostModel(min_observations=1)
    for size in range(1, 9):
        model.observe(size, float(size), 1.0)  # bigger is always better
    assert model.choose(2, 4).size == 4
    assert model.choose(1, 1).size == 1


def test_deadline_limits_the_batch_to_what_finishes_in_time():
    model = CostModel()
    for size in (1, 2, 4, 8):
        for _ in range(2):
            model.observe(size, float(size), 0.5 * size)  # 0.5 s per item at any size
    assert model.predict(4, 4.0) == pytest.approx(2.0)
    assert model.largest_within(seconds=2.1, units_per_item=1.0, max_size=8) == 4
    assert model.largest_within(seconds=0.1, units_per_item=1.0, max_size=8) == 1


def test_window_forgets_old_measurements():
    model = CostModel(window=3)
    for _ in range(3):
        model.observe(2, 2.0, 10.0)
    for _ in range(3):
        model.observe(2, 2.0, 1.0)
    assert model.throughput(2) == pytest.approx(2.0)


def test_the_warm_up_measures_every_candidate_as_often_as_choosing_needs():
    model = CostModel(min_observations=2)
    sizes = model.warm_up_sizes(8)
    assert sizes == [1, 2, 4, 8, 8, 4, 2, 1]  # up, then down: drift weighs on every size alike
    for size in sizes:
        model.observe(size, float(size), 0.1 + 0.073 * (size - 1))
    assert "best measured throughput" in model.choose(1, 8).reason
    assert model.warm_up_sizes(3) == [1, 2, 3, 3, 2, 1]


def test_a_bucket_with_a_prior_chooses_from_it_at_once_and_learns_its_own_scale():
    warm = CostModel()
    for size in warm.warm_up_sizes(8):
        warm.observe(size, float(size), 0.1 + 0.073 * (size - 1))  # best: 4
    cold = warm.for_bucket()
    assert cold.choose(1, 8).size == 4 and "estimated" in cold.choose(1, 8).reason
    cold.observe(4, 4.0, 3 * (0.1 + 0.073 * 3))  # the same curve at a third of the throughput
    assert cold.estimates(1, 8)[8] == pytest.approx(warm.throughput(8) / 3)
    assert cold.choose(1, 8).size == 4
    assert cold.predict(8, 8.0) == pytest.approx(8.0 / cold.throughput(4))  # deadlines: measured only


def test_measurements_of_two_sizes_override_a_prior_that_was_wrong_about_them():
    warm = CostModel()
    for size in (1, 2, 4, 8):
        warm.observe(size, float(size), 1.0)  # batching pays: 8 is best
    cold = warm.for_bucket()
    assert cold.choose(1, 8).size == 8
    cold.observe(8, 8.0, 8.0)  # here it does not: 1 unit/s at 8 ...
    cold.observe(1, 1.0, 0.5)  # ... and 2 at 1
    assert cold.choose(1, 8).size == 1


def test_a_prior_outside_the_allowed_sizes_does_not_stop_exploring():
    warm = CostModel()
    warm.observe(8, 8.0, 1.0)
    assert warm.for_bucket().choose(1, 4).reason.startswith("exploring")
    assert CostModel().for_bucket().choose(1, 8).reason.startswith("exploring")  # nothing measured
