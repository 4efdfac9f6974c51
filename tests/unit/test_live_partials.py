"""The room for live partial decodes (agents/live/partials.py), with an explicit clock."""

from __future__ import annotations

from agents.live.partials import PartialBudget


def turns(budget: PartialBudget[str]) -> list[str]:
    taken = []
    while (stream := budget.next_turn()) is not None:
        taken.append(stream)
        budget.sent(f"{stream}-{len(taken)}", final=False, now=0.0)
    return taken


def test_streams_take_turns_in_order_one_place_each_within_the_budget():
    budget: PartialBudget[str] = PartialBudget(slow_s=1.0, max_budget=32)
    for stream in ("a", "b", "a", "c"):
        budget.want(stream)
    assert turns(budget) == ["a", "b"]  # the budget starts at 2; "a" has one place
    assert budget.waiting("c") and not budget.waiting("a")
    budget.answered("a-1", now=0.5)
    assert turns(budget) == ["c"]


def test_a_stream_that_ends_leaves_the_line():
    budget: PartialBudget[str] = PartialBudget(slow_s=1.0, max_budget=32)
    budget.want("a")
    budget.want("b")
    budget.withdraw("a")
    assert budget.next_turn() == "b"
    assert budget.next_turn() is None


def test_no_partial_starts_while_a_final_is_out():
    budget: PartialBudget[str] = PartialBudget(slow_s=1.0, max_budget=32)
    budget.sent("final", final=True, now=0.0)
    budget.want("a")
    assert budget.next_turn() is None
    budget.answered("final", now=5.0)  # a final's round trip leaves the budget as it is
    assert budget.budget == 2.0
    assert budget.next_turn() == "a"


def test_quick_answers_grow_the_budget_and_slow_ones_halve_it_once_per_round_trip():
    budget: PartialBudget[str] = PartialBudget(slow_s=1.0, max_budget=32)
    budget.sent("p1", final=False, now=0.0)
    budget.answered("p1", now=0.2)
    assert budget.budget == 2.5
    for job_id in ("p2", "p3", "p4"):
        budget.sent(job_id, final=False, now=1.0)
    budget.answered("p2", now=3.0)
    budget.answered("p3", now=3.1)  # sent before the decrease: the same round trip
    assert budget.budget == 1.25
    budget.sent("p5", final=False, now=3.5)
    budget.answered("p5", now=5.0)  # sent after it: a new round trip, slow again
    assert budget.budget == 1.0  # never below one
    budget.dropped("p4")  # dropped: says nothing of the engine
    assert budget.budget == 1.0


def test_the_budget_stops_at_its_maximum_and_frees_room_for_dropped_decodes():
    budget: PartialBudget[str] = PartialBudget(slow_s=1.0, max_budget=3)
    for i in range(20):
        budget.sent(f"p{i}", final=False, now=float(i))
        budget.answered(f"p{i}", now=i + 0.1)
    assert budget.budget == 3.0
    for stream in "abcd":
        budget.want(stream)
    assert turns(budget) == ["a", "b", "c"]
    budget.dropped("a-1")
    assert turns(budget) == ["d"]
