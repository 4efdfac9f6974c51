"""The journal of `queue_for_batch` requests: jobs until they finish, then results until
fetched or until their TTL runs out. It lives in an SQLite file, so a restarted agent
loses none of them.

Bookkeeping only, with an explicit clock: callers pass `now` as wall-clock seconds
(`time.time()`), because entries outlive the process and a monotonic clock does not.

An entry is either pending (the job to run, kept for resubmission) or final (a success or
error reply). A final entry is handed out once by `fetch`, then forgotten; one nobody
fetches is forgotten `ttl_s` after it became final. A pending entry never expires here:
the agent's request timeout turns it into a final timeout error.

Durability: every change is committed before the method returns, with WAL and
synchronous=FULL, so once `add_pending` has returned the job survives a kill -9 of the
agent and a power cut alike; the agent answers "queued" only after that. One connection,
used by one thread at a time (the agent's socket loop).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from model_manager import protocol

PENDING_REPLY = "pending"
IN_MEMORY = ":memory:"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    request_id TEXT PRIMARY KEY,
    job BLOB,          -- msgpack (protocol.pack): what to resubmit while pending; NULL once final
    reply BLOB,        -- msgpack: the final reply; NULL while pending
    expires_at REAL    -- wall-clock seconds; NULL while pending
);
CREATE INDEX IF NOT EXISTS results_expiry ON results (expires_at);
"""


class ResultStore:
    def __init__(self, ttl_s: float, path: str | Path = IN_MEMORY) -> None:
        """Open (creating it and its directory if needed) the journal at `path`; the
        default keeps it in memory, for tests and for callers that need no durability."""
        self.ttl_s = ttl_s
        if str(path) != IN_MEMORY:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Autocommit: each statement is its own transaction, durable when it returns.
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def contains(self, request_id: str, now: float) -> bool:
        self.purge(now)
        row = self._db.execute("SELECT 1 FROM results WHERE request_id = ?", (request_id,)).fetchone()
        return row is not None

    def add_pending(self, request_id: str, now: float, job: dict[str, Any] | None = None) -> bool:
        """Journal a new pending entry holding `job`. False, and nothing changes, when
        `request_id` is already queued or unfetched (check and insert are one statement)."""
        self.purge(now)
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO results (request_id, job) VALUES (?, ?)",
            (request_id, None if job is None else protocol.pack(job)),
        )
        return cursor.rowcount == 1

    def complete(self, request_id: str, reply: dict[str, Any], now: float) -> None:
        """Make `reply` the final result, fetchable until now + ttl_s; the job is dropped."""
        self._db.execute(
            "INSERT INTO results (request_id, job, reply, expires_at) VALUES (?, NULL, ?, ?) "
            "ON CONFLICT (request_id) DO UPDATE SET job = NULL, reply = excluded.reply, "
            "expires_at = excluded.expires_at",
            (request_id, protocol.pack(reply), now + self.ttl_s),
        )

    def fetch(self, request_id: str, now: float) -> dict[str, Any] | None:
        """The final reply (removed on fetch), a pending status, or None if unknown/expired."""
        self.purge(now)
        row = self._db.execute("SELECT reply FROM results WHERE request_id = ?", (request_id,)).fetchone()
        if row is None:
            return None
        if row[0] is None:
            return {"status": PENDING_REPLY, "request_id": request_id}
        self._db.execute("DELETE FROM results WHERE request_id = ?", (request_id,))
        return protocol.unpack(row[0])

    def pending(self) -> list[tuple[str, dict[str, Any] | None]]:
        """Every pending entry and its job, oldest first: what a restarted agent resubmits."""
        rows = self._db.execute(
            "SELECT request_id, job FROM results WHERE reply IS NULL ORDER BY rowid"
        ).fetchall()
        return [(rid, None if job is None else protocol.unpack(job)) for rid, job in rows]

    def purge(self, now: float) -> int:
        """Forget final results whose TTL has run out; returns how many."""
        return self._db.execute("DELETE FROM results WHERE expires_at <= ?", (now,)).rowcount
