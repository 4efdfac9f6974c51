"""The figures of live streams (agents/live/stats.py): sessions that ended still count."""

from __future__ import annotations

from agents.live.session import FINAL, PARTIAL, LiveEvent, LiveSession
from agents.live.stats import LiveStats


def test_the_report_adds_up_open_and_ended_streams():
    stats, ended, still_open = LiveStats(), LiveSession(), LiveSession()
    ended.skipped_decodes, still_open.skipped_decodes = 2, 3
    stats.opened = 2
    stats.decode_sent(final=False)
    stats.decode_sent(final=True)
    stats.decode_answered(4)
    stats.decode_answered(None)
    stats.event_sent(LiveEvent(PARTIAL, 0, 0.0, 1.0, "hi", latency_s=0.25))
    stats.event_sent(LiveEvent(FINAL, 0, 0.0, 1.0, "hi there", latency_s=0.5))
    stats.event_sent(LiveEvent("speech_started", 1, 2.0))
    stats.ended("hangup", ended)
    report = stats.report([still_open], partial_budget=2.7)
    assert report["open_streams"] == 1 and report["opened"] == 2
    assert report["ended_by"] == {"hangup": 1}
    assert report["decodes"] == {PARTIAL: 1, FINAL: 1}
    assert report["events"] == {PARTIAL: 1, FINAL: 1, "speech_started": 1}
    assert report["decodes_skipped"] == 5
    assert report["partial_budget"] == 2
    assert report["decode_batch_size_histogram"] == {"4": 1}
    assert report["partial_latency_ms"]["p50"] == 250.0
    assert report["final_latency_ms"]["p50"] == 500.0
