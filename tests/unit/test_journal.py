"""The queue_for_batch journal (agents/results.py): what one agent process wrote, the next finds."""

from __future__ import annotations

import sqlite3

import numpy as np

from agents.results import ResultStore


def test_pending_jobs_and_results_survive_a_reopen(tmp_path):
    path = tmp_path / "journal" / "stt-5800.sqlite3"
    audio = np.linspace(-1, 1, 1600, dtype=np.float32)
    first = ResultStore(ttl_s=60, path=path)
    assert first.add_pending(
        "a", now=1000, job={"message": {"request": {"audio": audio}}, "deadline_at": 1100}
    )
    assert first.add_pending("b", now=1000, job={"message": {}})
    first.complete("b", {"status": "success", "text": "hi", "audio": b"\x00\x01"}, now=1001)
    # Like kill -9: no close(), the next process opens the same file.
    second = ResultStore(ttl_s=60, path=path)
    [(request_id, job)] = second.pending()
    assert request_id == "a" and job["deadline_at"] == 1100
    np.testing.assert_array_equal(job["message"]["request"]["audio"], audio)
    assert second.fetch("a", now=1002) == {"status": "pending", "request_id": "a"}
    assert second.fetch("b", now=1002) == {"status": "success", "text": "hi", "audio": b"\x00\x01"}
    assert second.fetch("b", now=1002) is None  # handed out once
    first.close()
    second.close()


def test_a_request_id_is_refused_while_queued_or_unfetched(tmp_path):
    store = ResultStore(ttl_s=10, path=tmp_path / "j.sqlite3")
    assert store.add_pending("x", now=0)
    assert not store.add_pending("x", now=1)
    store.complete("x", {"status": "success"}, now=2)
    assert not store.add_pending("x", now=3)
    assert store.add_pending("x", now=12)  # the unfetched result expired at 2 + 10
    assert len(store) == 1


def test_expiry_uses_the_wall_clock_stored_in_the_file(tmp_path):
    path = tmp_path / "j.sqlite3"
    store = ResultStore(ttl_s=10, path=path)
    store.complete("late", {"status": "success"}, now=1_700_000_000)
    store.close()
    reopened = ResultStore(ttl_s=10, path=path)
    assert reopened.contains("late", now=1_700_000_009.9)
    assert reopened.purge(now=1_700_000_010) == 1
    assert len(reopened) == 0


def test_the_journal_is_in_wal_mode(tmp_path):
    path = tmp_path / "j.sqlite3"
    ResultStore(ttl_s=1, path=path).add_pending("a", now=0)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
