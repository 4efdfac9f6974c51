"""The batch-size policy alone: cost models in, sizes and queue order out, time passed in."""

from __future__ import annotations

import pytest

from model_manager.batch_sizes import SHORT_WORK_MEMORY_S, BatchSizes
from model_manager.batcher import BatchPolicy
from model_manager.jobs import Job


def measured(sizes: BatchSizes, bucket: object, seconds_by_size: dict[int, float], units: float = 1.0
             ) -> None:
    """Give `bucket`'s cost model enough batches of each size to choose from."""
    cost = sizes.cost(bucket)
    for size, seconds in seconds_by_size.items():
        for _ in range(cost.min_observations):
            cost.observe(size, units * size, seconds)


def job(name: str, bucket: object = None, cost: float = 1.0, target: float | None = None,
        deadline: float = 1e12) -> Job:
    return Job(job_id=name, model="m", request=name, key=bucket, deadline=deadline, target=target,
               cost=cost, bucket=bucket)


CPU_LIKE = {1: 1.0, 2: 1.8, 4: 3.4}  # batching gains little, a batch takes n times as long
GPU_LIKE = {1: 1.0, 2: 1.1, 4: 1.3}  # batching is nearly free


def test_without_dynamic_batching_the_configured_sizes_apply_as_they_are():
    sizes = BatchSizes(BatchPolicy(max_batch_size=4, min_batch_size=2), dynamic_batching=False)
    measured(sizes, None, GPU_LIKE)
    effective = sizes.refresh()
    assert (effective.max_batch_size, effective.min_batch_size) == (4, 2)
    assert not sizes.chooses and sizes.choice.reason == "dynamic_batching is off: configured sizes"


def test_with_dynamic_batching_the_measured_best_size_is_chosen_after_exploring():
    sizes = BatchSizes(BatchPolicy(max_batch_size=4, min_batch_size=2))
    sizes.refresh()
    assert sizes.chooses and sizes.choice.size == 1 and sizes.choice.reason.startswith("exploring")
    measured(sizes, None, GPU_LIKE)
    assert sizes.refresh().max_batch_size == 4  # the batcher keeps the configured bounds
    assert sizes.choice.size == 4 and "best" in sizes.choice.reason


def test_each_bucket_has_its_own_size_and_a_new_bucket_starts_from_the_warm_up():
    sizes = BatchSizes(BatchPolicy(max_batch_size=4))
    measured(sizes, "short", CPU_LIKE)
    sizes.warmed_up("short")
    sizes.queued(job("a", bucket="short"))
    sizes.queued(job("b", bucket="long"))
    sizes.refresh()
    assert sizes.group_size("short", now=0.0, splitting=False) == 4
    # "long" has not run yet: its estimates are the warm-up's, so it exploits at once.
    assert sizes.group_size("long", now=0.0, splitting=False) == 4
    assert sizes.cost("long").prior


@pytest.mark.parametrize(("seconds_by_size", "slice_size"), [(CPU_LIKE, 1), (GPU_LIKE, 4)])
def test_units_batch_in_slices_only_while_short_requests_are_about(seconds_by_size, slice_size):
    sizes = BatchSizes(BatchPolicy(max_batch_size=4, min_batch_size=1))
    measured(sizes, "long", seconds_by_size)
    sizes.queued(job("L", bucket="long"))
    sizes.refresh()
    best = sizes.group_size("long", now=0.0, splitting=True)  # no short request seen yet
    sizes.whole_arrived(now=100.0)
    assert sizes.group_size("long", now=101.0, splitting=True) == min(best, slice_size)
    assert sizes.group_size("long", now=101.0, splitting=False) == best  # no units in that group
    assert sizes.group_size("long", now=100.0 + SHORT_WORK_MEMORY_S, splitting=True) == best


def test_the_next_batch_is_no_longer_than_the_most_urgent_target_allows():
    sizes = BatchSizes(BatchPolicy(max_batch_size=4, min_batch_size=1))
    measured(sizes, None, {1: 0.1, 2: 0.18, 4: 0.32})
    queued = [job("urgent", target=0.15), job("b"), job("c"), job("d")]
    assert sizes.limit(queued, now=0.0, cap=4) == 1  # only one item finishes within 0.15 s
    # Already too late even alone: it no longer shrinks batches.
    hopeless = [job("late", target=0.05), job("b"), job("c"), job("d")]
    assert sizes.limit(hopeless, now=0.0, cap=4) == 4
    assert sizes.limit(hopeless, now=0.0, cap=2) == 2  # memory still caps it


def test_queue_order_is_expected_finish_with_unit_scheduling_and_arrival_without():
    sizes = BatchSizes(BatchPolicy(max_batch_size=2))
    assert sizes.order(job("a", cost=3.0), now=5.0) == 5.0  # nothing measured: takes no time
    measured(sizes, "long", {1: 1.0}, units=30.0)
    measured(sizes, "short", {1: 0.1}, units=2.0)
    assert sizes.order(job("l", bucket="long", cost=30.0), now=5.0) == pytest.approx(6.0)
    assert sizes.order(job("l", bucket="long", cost=30.0), now=5.0, sharing=2) == pytest.approx(7.0)
    assert sizes.order(job("s", bucket="long", cost=30.0, target=5.5), now=5.0) == 5.5  # its target
    # A bucket not measured alone: the best rate measured anywhere (30 units/s here).
    assert sizes.solo_seconds(job("n", bucket="new", cost=15.0)) == pytest.approx(0.5)
    plain = BatchSizes(BatchPolicy(unit_scheduling=False))
    assert plain.order(job("a"), now=5.0) is None


def test_a_full_queue_says_when_to_come_back():
    sizes = BatchSizes(BatchPolicy(max_batch_size=2))
    queued = [job(str(i), cost=2.0) for i in range(4)]
    assert sizes.drain_estimate_ms(queued) == 1000  # nothing measured: a second
    measured(sizes, None, {1: 0.5, 2: 0.5})
    sizes.refresh()
    assert sizes.drain_estimate_ms(queued) == 2000  # 8 units at 4 units/s


def test_a_clean_batch_teaches_its_bucket_and_becomes_what_the_choice_describes():
    sizes = BatchSizes(BatchPolicy(max_batch_size=2))
    batch = [job("a", bucket="short", cost=2.0), job("b", bucket="short", cost=2.0)]
    sizes.observe(batch, 0.5)
    assert sizes.last_bucket == "short"
    assert sizes.cost("short").throughput(2) == pytest.approx(8.0)
    assert sizes.snapshot()["throughput_by_size"] == {"2": 8.0}


def test_an_engine_that_runs_one_request_at_a_time_gets_batches_of_one():
    # Kokoro on a CPU runs a batch's requests one after another: a batch of 8 answers its
    # first request only when its eighth is done, for no gain in throughput.
    sizes = BatchSizes(BatchPolicy(max_batch_size=8, min_batch_size=2), width=1)
    assert sizes.warm_up_sizes() == [1, 1]
    measured(sizes, None, {1: 1.0})
    effective = sizes.refresh()
    assert (effective.max_batch_size, effective.min_batch_size) == (1, 1)
    assert sizes.choice.size == 1 and sizes.group_size("key", 0.0, splitting=False) == 1


def test_the_engines_width_does_not_override_sizes_set_by_hand():
    sizes = BatchSizes(BatchPolicy(max_batch_size=8, min_batch_size=2), dynamic_batching=False, width=1)
    effective = sizes.refresh()
    assert (effective.max_batch_size, effective.min_batch_size) == (8, 2)
