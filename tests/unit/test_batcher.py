"""The batching policy on a simulated clock: no sockets, threads, sleeps or models."""

import pytest

from model_manager.batcher import BULK, INTERACTIVE, BatchPolicy, DynamicBatcher, QueueFull


def make(**kw) -> DynamicBatcher[str]:
    # lone wait = max wait turns the single-user fast path off, for the plain policy tests.
    defaults = dict(max_batch_size=4, min_batch_size=2, max_batch_wait_ms=100, max_queue_size=16,
                    lone_request_wait_ms=100)
    return DynamicBatcher(BatchPolicy(**{**defaults, **kw}))


def test_lone_request_waits_for_company_then_goes_alone():
    b = make()
    b.add("a", "k", now=0.0)
    assert b.next_batch(0.05) is None
    assert b.seconds_until_due(0.05) == pytest.approx(0.05)
    batch = b.next_batch(0.1)
    assert batch.items == ["a"] and batch.reason == "timeout"
    assert batch.waited_s == [pytest.approx(0.1)]
    assert len(b) == 0 and b.seconds_until_due(0.2) is None


def test_min_batch_size_fires_without_waiting():
    b = make()
    b.add("a", "k", 0.0)
    b.add("b", "k", 0.01)
    batch = b.next_batch(0.01)
    assert batch.items == ["a", "b"] and batch.reason == "min_reached"


def test_full_batch_fires_and_overflow_keeps_its_arrival_time():
    b = make(min_batch_size=4)
    for i in range(6):
        b.add(str(i), "k", 0.0)
    first = b.next_batch(0.0)
    assert first.items == ["0", "1", "2", "3"] and first.reason == "full"
    assert b.next_batch(0.05) is None  # the 2 left wait for their own arrival + max_wait
    assert b.next_batch(0.1).items == ["4", "5"]


def test_wait_is_counted_from_the_first_arrival_not_the_last():
    b = make(min_batch_size=3)
    b.add("a", "k", 0.0)
    b.add("b", "k", 0.09)
    assert b.next_batch(0.1).items == ["a", "b"]


def test_incompatible_requests_never_share_a_batch():
    b = make()
    b.add("en1", ("tiny", "en"), 0.0)
    b.add("fr1", ("tiny", "fr"), 0.0)
    b.add("en2", ("tiny", "en"), 0.0)
    first = b.next_batch(0.0)
    assert first.key == ("tiny", "en") and first.items == ["en1", "en2"]
    assert b.next_batch(0.0) is None
    assert b.next_batch(0.1).items == ["fr1"]


def test_equal_content_keys_group_together():
    # Keys are compared by value: two equal tuples built separately are one group.
    b = make()
    b.add("a", ("voice", 1.0), 0.0)
    b.add("b", tuple(["voice", 1.0]), 0.0)
    assert b.next_batch(0.0).items == ["a", "b"]


def test_oldest_due_group_goes_first():
    b = make(min_batch_size=1)
    b.add("late", "k2", 1.0)
    b.add("early", "k1", 0.5)
    assert b.next_batch(1.0).items == ["early"]


def test_interactive_beats_bulk():
    b = make(min_batch_size=1)
    b.add("bulk", "k1", 0.0, priority=BULK)
    b.add("now", "k2", 0.5, priority=INTERACTIVE)
    assert b.next_batch(1.0).items == ["now"]


def test_order_ranks_groups_and_items_of_one_priority_and_the_wait_still_counts_from_arrival():
    # The scheduler passes each item's expected finish as its order: a short request that
    # arrives later but will finish sooner goes before a long request's next unit.
    b = make(min_batch_size=1, max_batch_size=2)
    b.add("unit", "long", 1.0, order=2.2)
    b.add("short", "short", 1.5, order=1.8)
    b.add("urgent unit", "long", 1.6, order=1.7)
    first = b.next_batch(1.6)
    assert first.key == "long" and first.items == ["urgent unit", "unit"]  # most urgent first
    assert first.waited_s == [pytest.approx(0.0), pytest.approx(0.6)]
    assert b.next_batch(1.6).items == ["short"]
    # The batching wait is counted from the oldest arrival, whatever the order.
    b = make(min_batch_size=3)
    b.add("old", "k", 0.0, order=5.0)
    b.add("new", "k", 0.05, order=1.0)
    assert b.next_batch(0.1).items == ["new", "old"]


def test_admitted_items_are_never_refused_by_a_full_queue():
    b = make(max_queue_size=1)
    b.add("request", "k", 0.0)
    b.add("its next unit", "k", 0.0, admitted=True)  # part of a request already taken
    assert len(b) == 2
    with pytest.raises(QueueFull):
        b.add("another request", "k", 0.0)


def test_disabled_batching_runs_every_item_alone_at_once():
    b = make(enabled=False)
    b.add("a", "k", 0.0)
    b.add("b", "k", 0.0)
    assert b.next_batch(0.0).items == ["a"]
    assert b.next_batch(0.0).reason == "unbatched"


def test_limit_caps_the_batch():
    b = make(min_batch_size=1)
    for i in range(4):
        b.add(str(i), "k", 0.0)
    assert b.next_batch(0.0, limit=3).items == ["0", "1", "2"]


def test_full_queue_rejects_at_once():
    b = make(max_queue_size=2)
    b.add("a", "k", 0.0)
    b.add("b", "j", 0.0)
    with pytest.raises(QueueFull):
        b.add("c", "k", 0.0)


def test_remove_and_drain_return_everything_they_take():
    b = make()
    for i in range(5):
        b.add(i, "even" if i % 2 == 0 else "odd", 0.0)
    assert sorted(b.remove(lambda i: i >= 3)) == [3, 4]
    assert len(b) == 3
    assert sorted(b.drain()) == [0, 1, 2]
    assert len(b) == 0


def test_policy_rejects_inconsistent_sizes():
    with pytest.raises(ValueError):
        BatchPolicy(max_batch_size=2, min_batch_size=3)


def test_a_lone_request_goes_after_the_short_fast_path_wait_not_the_full_wait():
    b = make(lone_request_wait_ms=2)
    b.add("a", "k", 0.0)
    assert b.next_batch(0.001) is None
    assert b.seconds_until_due(0.001) == pytest.approx(0.001)
    batch = b.next_batch(0.002)
    assert batch.items == ["a"] and batch.reason == "fast_path"


def test_no_fast_path_while_others_are_queued():
    b = make(lone_request_wait_ms=2, min_batch_size=3)
    b.add("a", "k", 0.0)
    b.add("b", "other", 0.001)
    assert b.next_batch(0.05) is None  # two requests in the air: wait for company
    assert b.next_batch(0.1).items == ["a"]


def test_an_idle_worker_runs_the_most_urgent_of_items_that_cannot_batch_together():
    b = make(lone_request_wait_ms=2)
    b.add("partial", "10s window", 1.0, priority=BULK)
    b.add("final", "15s window", 1.001)
    assert b.next_batch(1.002, idle_since=0.5) is None  # arrivals have not paused yet
    assert b.seconds_until_due(1.002, idle_since=0.5) == pytest.approx(0.001)
    batch = b.next_batch(1.003, idle_since=0.5)
    assert batch.items == ["final"] and batch.reason == "fast_path"
    b.add("company", "10s window", 1.004)  # a pair batches as before
    b.add("other", "20s window", 1.004)
    assert b.next_batch(1.01, idle_since=0.5).reason == "min_reached"
    assert b.next_batch(1.011).items == ["other"]  # alone now: the lone rule
    b.add("x", "10s window", 2.0)
    b.add("y", "15s window", 2.0)
    assert b.next_batch(2.01, idle_since=None) is None  # a busy worker: they wait for company


def test_a_lone_request_reaching_an_idle_worker_runs_at_once():
    b = make(lone_request_wait_ms=2)
    b.add("a", "k", 1.0)
    # The worker has been idle since 0.5: no running batch's replies can bring company.
    batch = b.next_batch(1.0, idle_since=0.5)
    assert batch.items == ["a"] and batch.reason == "fast_path" and batch.waited_s == [0.0]


def test_a_request_right_after_a_batch_ends_still_waits_for_its_burst():
    b = make(lone_request_wait_ms=2)
    b.add("a", "k", 1.0005)  # the first reply-triggered request of a burst
    assert b.next_batch(1.0005, idle_since=1.0) is None
    assert b.next_batch(1.0005, idle_since=None) is None  # busy worker: no idle rule
    b.add("b", "k", 1.001)
    assert b.next_batch(1.001, idle_since=1.0).items == ["a", "b"]


def test_group_size_caps_each_group_on_its_own():
    b = make(max_batch_size=8, min_batch_size=8)
    b.group_size = {"short": 2, "long": 8}.get
    for i in range(3):
        b.add(f"s{i}", "short", 0.0)
        b.add(f"l{i}", "long", 0.0)
    first = b.next_batch(0.0)
    assert first.items == ["s0", "s1"] and first.reason == "full"
    assert b.next_batch(0.0) is None  # "long" waits for 8 (or its timeout); "short" has 1 of 2
    assert b.next_batch(0.1).items in (["l0", "l1", "l2"], ["s2"])


def test_a_lone_wait_as_long_as_the_batching_wait_turns_the_idle_rule_off():
    b = make(lone_request_wait_ms=100, max_batch_wait_ms=100)
    b.add("a", "k", 1.0)
    assert b.next_batch(1.0, idle_since=0.0) is None


def test_jobs_still_on_their_way_hold_the_fast_path_but_not_the_timeout():
    b = make(lone_request_wait_ms=2)
    b.add("a", "k", 1.0)
    # Two more are being prepared: "a" alone now would run just before its company arrives.
    assert b.next_batch(1.01, idle_since=0.5, incoming=2) is None
    assert b.seconds_until_due(1.01, idle_since=0.5, incoming=2) == pytest.approx(0.09)  # no spin
    assert b.next_batch(1.01, idle_since=0.5).reason == "fast_path"  # once they have arrived
    b.add("b", "k", 2.0)
    assert b.next_batch(2.1, incoming=1).reason == "timeout"  # never longer than max wait
