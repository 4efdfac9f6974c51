"""The figures of an agent's live streams, for its `stats` reply and Prometheus
(agents/metrics.py reads the names `LiveStats.report` gives)."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable
from typing import Any

from agents.live.session import FINAL, PARTIAL, LiveEvent, LiveSession
from model_manager.percentiles import percentiles_ms

#: The recent latencies the percentiles are computed over.
LATENCY_WINDOW = 1000
#: Report name -> the `LiveSession` counter it adds up over every stream, open or ended.
SESSION_COUNTERS = {
    "decodes_skipped": "skipped_decodes",
    "finals_from_partials": "finals_from_partials",
    "finals_retried_alone": "finals_retried_alone",
    "partials_set_aside": "partials_set_aside",
}


class LiveStats:
    def __init__(self) -> None:
        self.opened = 0
        self.ended_by: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        self.decodes: Counter[str] = Counter()
        self.decode_batch_sizes: Counter[int] = Counter()
        self._ended_sessions: Counter[str] = Counter()  # SESSION_COUNTERS of the streams that ended
        self.latency_s: dict[str, deque[float]] = {
            PARTIAL: deque(maxlen=LATENCY_WINDOW), FINAL: deque(maxlen=LATENCY_WINDOW)}

    def event_sent(self, event: LiveEvent) -> None:
        self.events[event.type] += 1
        if event.latency_s is not None and event.type in self.latency_s:
            self.latency_s[event.type].append(event.latency_s)

    def decode_sent(self, final: bool) -> None:
        self.decodes[FINAL if final else PARTIAL] += 1

    def decode_answered(self, batch_size: int | None) -> None:
        if batch_size is not None:
            self.decode_batch_sizes[batch_size] += 1

    def ended(self, reason: str, session: LiveSession) -> None:
        self.ended_by[reason] += 1
        for name, counter in SESSION_COUNTERS.items():
            self._ended_sessions[name] += getattr(session, counter)

    def report(self, open_sessions: Iterable[LiveSession], partial_budget: float) -> dict[str, Any]:
        sessions = list(open_sessions)
        counts = {name: self._ended_sessions[name] + sum(getattr(s, counter) for s in sessions)
                  for name, counter in SESSION_COUNTERS.items()}
        return {
            "open_streams": len(sessions),
            "opened": self.opened,
            "ended_by": dict(self.ended_by),
            "events": dict(self.events),
            "decodes": dict(self.decodes),
            **counts,
            "partial_budget": int(partial_budget),
            "decode_batch_size_histogram": {str(k): v for k, v in sorted(self.decode_batch_sizes.items())},
            "partial_latency_ms": percentiles_ms(self.latency_s[PARTIAL], decimals=1),
            "final_latency_ms": percentiles_ms(self.latency_s[FINAL], decimals=1),
        }
