"""The STT agent's settings for live streams: its limits, and how it sends their decodes."""

from __future__ import annotations

from dataclasses import dataclass, field

from agents.live.session import LiveConfig


@dataclass(frozen=True)
class LiveSettings:
    max_open_streams: int = 64
    idle_timeout_s: float = 30.0
    hangup_grace_s: float = 2.0
    max_chunk_s: float = 10.0
    max_audio_seconds: float = 600.0
    max_wait_ms: int = 30_000  # the longest a next_event call waits
    max_buffered_events: int = 10_000
    partial_timeout_ms: int = 10_000
    request_timeout_ms: int = 120_000
    #: A partial answered later than this after it was sent halves the partial budget.
    partial_slow_s: float = 1.0
    #: When a decode's answer is wanted (sent as the job's target_ms: batches are sized so
    #: that the most urgent job's answer comes by then, as the engine's measured costs predict).
    final_target_ms: int = 300
    partial_target_ms: int = 500
    max_partial_budget: int = 32
    session: LiveConfig = field(default_factory=LiveConfig)
