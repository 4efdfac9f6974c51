"""The record of requests run as units (model_manager/units.py): pure, no clock or threads."""

from __future__ import annotations

import pytest

from model_manager.errors import INFERENCE_FAILED, TIMEOUT, BusError
from model_manager.units import BatchRun, Failed, Joined, SplitBook


def test_units_are_released_a_room_at_a_time_in_order():
    book: SplitBook[str] = SplitBook()
    split = book.open("long", ["u0", "u1", "u2", "u3", "u4"])
    first = book.release(split, 2)
    assert [(ref.index, unit) for ref, unit in first] == [(0, "u0"), (1, "u1")]
    assert book.release(split, 2) == []  # two are queued or running: no room
    book.completed(first[0][0], "r0", 0.1, BatchRun(0, 1.0, 2))
    assert [ref.index for ref, _ in book.release(split, 2)] == [2]
    assert [ref.index for ref, _ in book.release(split, 8)] == [3, 4]  # room grew: the rest
    assert book.release(split, 0) == []  # room is at least one, and none is left


def test_results_join_in_unit_order_whatever_order_they_finish_in():
    book: SplitBook[str] = SplitBook()
    split = book.open("long", ["u0", "u1", "u2"])
    refs = [ref for ref, _ in book.release(split, 3)]
    assert book.completed(refs[2], "r2", 0.5, BatchRun(7, 2.0, 3)) is None
    assert book.completed(refs[0], "r0", 0.5, BatchRun(7, 2.0, 3)) is None
    joined = book.completed(refs[1], "r1", 0.25, BatchRun(8, 1.5, 1))
    assert isinstance(joined, Joined)
    assert joined.parent == "long" and joined.results == ["r0", "r1", "r2"]
    # Its timing: every unit's wait, and each batch's engine time once (two units shared batch 7).
    assert joined.queue_s == pytest.approx(1.25)
    assert joined.compute_s == pytest.approx(3.5)
    assert joined.batch_size == 3
    assert split not in book and len(book) == 0


def test_a_failed_unit_closes_its_split_with_the_cause_and_nothing_later_counts():
    book: SplitBook[str] = SplitBook()
    split = book.open("long", ["u0", "u1", "u2", "u3"])
    other = book.open("other", ["v0", "v1"])
    refs = [ref for ref, _ in book.release(split, 4)]
    failed = book.failed(refs[2], BusError(INFERENCE_FAILED, "empty audio"))
    assert isinstance(failed, Failed) and failed.parent == "long"
    assert failed.error.code == INFERENCE_FAILED and failed.error.message == "part 3 of 4 failed: empty audio"
    # Units that were running when it failed, or fail later, change nothing: one answer.
    assert book.completed(refs[0], "r0", 0.0, BatchRun(1, 1.0, 1)) is None
    assert book.failed(refs[3], BusError(TIMEOUT, "late")) is None
    assert book.release(split, 4) == []
    assert split not in book and other in book  # the other request is untouched


def test_a_unit_reported_twice_counts_once():
    book: SplitBook[str] = SplitBook()
    split = book.open("long", ["u0", "u1"])
    first, second = (ref for ref, _ in book.release(split, 2))
    assert book.completed(first, "r0", 0.0, BatchRun(0, 1.0, 1)) is None
    assert book.completed(first, "again", 0.0, BatchRun(1, 1.0, 1)) is None
    joined = book.completed(second, "r1", 0.0, BatchRun(2, 1.0, 1))
    assert joined is not None and joined.results == ["r0", "r1"]


def test_cancel_closes_matching_splits_unanswered_and_drain_returns_the_rest():
    book: SplitBook[str] = SplitBook()
    gone = book.open("gone", ["a", "b"])
    kept = book.open("kept", ["c", "d"])
    (ref, _), = book.release(gone, 1)
    assert book.cancel(lambda parent: parent == "gone") == ["gone"]
    assert book.completed(ref, "late", 0.0, BatchRun(0, 1.0, 1)) is None
    assert kept in book
    assert book.drain() == ["kept"] and len(book) == 0


def test_a_request_of_one_unit_is_not_a_split():
    with pytest.raises(ValueError):
        SplitBook().open("short", ["only"])
