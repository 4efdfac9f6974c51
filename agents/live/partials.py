"""Room for partial decodes at the model manager, shared fairly by every live stream.

`PartialBudget` is pure: no sockets, no clock of its own (every method that depends on
time takes `now`). The agent tells it which streams want a partial decode (`want`), which
decodes it sent (`sent`) and how they ended (`answered`, `dropped`), and asks it whose turn
it is (`next_turn`).

Contract:
- At most `budget` partial decodes are out at once, over all streams. Streams that want
  one wait in line, first come first served, one place per stream; a stream that ends
  leaves the line (`withdraw`). The caller cuts a stream's request when its turn comes, so
  it covers its newest audio.
- While a final decode is out no partial starts: no final waits behind a partial sent
  after it.
- The budget adapts to the engine, as TCP's window does: it halves (not below 1) when a
  partial took longer than `slow_s` from send to answer, once per round trip, not once per
  slow answer, and grows by 1/budget for each quicker one (up to `max_budget`). So
  partials never pile up in front of finals on a slow engine, and batch widely on a fast one.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)  # a stream, as the caller names it

#: The budget a new agent starts with: it adapts within a few answers.
INITIAL_BUDGET = 2.0


class PartialBudget(Generic[K]):
    def __init__(self, slow_s: float, max_budget: int, budget: float = INITIAL_BUDGET) -> None:
        self.slow_s = slow_s
        self.max_budget = float(max_budget)
        self.budget = min(budget, self.max_budget)
        self._line: dict[K, None] = {}  # the streams waiting for room, in order
        self._partials: dict[str, float] = {}  # partial decodes out: job_id -> sent at
        self._finals: set[str] = set()  # final decodes out
        self._last_decrease = -math.inf

    def want(self, stream: K) -> None:
        """`stream` wants a partial decode: in line, unless it is already."""
        self._line.setdefault(stream)

    def withdraw(self, stream: K) -> None:
        self._line.pop(stream, None)

    def waiting(self, stream: K) -> bool:
        return stream in self._line

    def next_turn(self) -> K | None:
        """The stream whose partial decode may start now, out of line; None while there is
        no room, a final is out, or no stream waits."""
        if self._finals or not self._line or len(self._partials) >= int(self.budget):
            return None
        stream = next(iter(self._line))
        del self._line[stream]
        return stream

    def sent(self, job_id: str, final: bool, now: float) -> None:
        if final:
            self._finals.add(job_id)
        else:
            self._partials[job_id] = now

    def answered(self, job_id: str, now: float) -> None:
        """A decode's answer came (a result or an error): a partial's round trip adapts the budget."""
        self._finals.discard(job_id)
        sent_at = self._partials.pop(job_id, None)
        if sent_at is None:
            return
        if now - sent_at > self.slow_s:
            if sent_at >= self._last_decrease:  # one decrease per round trip, not one per answer
                self.budget = max(1.0, self.budget / 2)
                self._last_decrease = now
        else:
            self.budget = min(self.max_budget, self.budget + 1 / self.budget)

    def dropped(self, job_id: str) -> None:
        """A decode no longer wanted: its room is free, and it says nothing of the engine."""
        self._finals.discard(job_id)
        self._partials.pop(job_id, None)
