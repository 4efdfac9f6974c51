"""Results of `queue_for_batch` requests, kept until fetched or until their TTL runs out.

Pure bookkeeping with an explicit clock: the agent passes `now` (monotonic seconds).
An entry is either pending (the job is running) or final (a success or error reply).
A final entry is handed out once by `fetch`, then forgotten; one nobody fetches is
forgotten `ttl_s` after it became final. A pending entry never expires here: the agent's
request timeout turns it into a final timeout error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PENDING_REPLY = "pending"


@dataclass
class _Entry:
    reply: dict[str, Any] | None  # None while pending
    expires_at: float


class ResultStore:
    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def contains(self, request_id: str, now: float) -> bool:
        self.purge(now)
        return request_id in self._entries

    def add_pending(self, request_id: str, now: float) -> None:
        self._entries[request_id] = _Entry(None, float("inf"))

    def complete(self, request_id: str, reply: dict[str, Any], now: float) -> None:
        self._entries[request_id] = _Entry(reply, now + self.ttl_s)

    def fetch(self, request_id: str, now: float) -> dict[str, Any] | None:
        """The final reply (removed on fetch), a pending status, or None if unknown/expired."""
        self.purge(now)
        entry = self._entries.get(request_id)
        if entry is None:
            return None
        if entry.reply is None:
            return {"status": PENDING_REPLY, "request_id": request_id}
        del self._entries[request_id]
        return entry.reply

    def purge(self, now: float) -> None:
        expired = [rid for rid, e in self._entries.items() if e.expires_at <= now]
        for rid in expired:
            del self._entries[rid]
