"""The live-stream benchmark's arithmetic (scripts/bench/live.py): latencies from events,
the summary row, and the most streams a sweep holds. No sockets, no models."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from bench.live import (  # noqa: E402
    _mean_batch,
    _stats_delta,
    final_latencies,
    most_streams_within,
    partial_latencies,
    summarize_live,
)
from bench.live_clips import LiveClip, StreamOutcome, Utterance  # noqa: E402

CLIP = LiveClip(np.zeros(16000 * 8, np.float32),
                (Utterance("hello there", 0.5, 2.0), Utterance("good bye", 3.0, 4.5)))


def event(kind: str, start: float, end: float | None, text: str = "") -> dict:
    return {"type": kind, "start_s": start, "end_s": end, "text": text, "utterance": 0}


def test_latencies_are_measured_from_when_the_audio_existed():
    outcome = StreamOutcome(CLIP, [
        (1.3, event("partial", 0.3, 1.0, "hello")),
        (2.9, event("final", 0.3, 2.2, "hello there")),
        (5.5, event("final", 2.8, 4.7, "good bye")),
    ])
    assert final_latencies(outcome) == pytest.approx([0.9, 1.0])  # after 2.0 and 4.5
    assert partial_latencies(outcome) == pytest.approx([0.3])
    row = summarize_live([outcome])
    assert row["finals"] == row["utterances"] == 2 and row["wer_finals"] == 0.0 and row["errors"] == []
    assert row["final_p50_s"] == pytest.approx(0.95)


def test_missing_finals_and_errors_show_in_the_row():
    error = {**event("error", 0.3, 2.2), "error": {"code": "timeout"}}
    failed = StreamOutcome(CLIP, [(2.9, error)], "no_reply")
    row = summarize_live([failed])
    assert row["finals"] == 0 and row["final_p95_s"] is None and row["errors"] == ["no_reply", "timeout"]
    assert row["wer_finals"] == 1.0


def test_most_streams_within_stops_at_the_first_level_that_misses():
    rows = [{"streams": n, "final_p95_s": p95, "errors": [], "finals": 3, "utterances": 3}
            for n, p95 in ((1, 0.8), (4, 1.2), (8, 1.7), (16, 1.4))]
    assert most_streams_within(rows, 1.5) == 4
    assert most_streams_within(rows, 0.5) == 0
    rows[1]["errors"] = ["timeout"]
    assert most_streams_within(rows, 1.5) == 1


def test_stats_delta_and_mean_batch():
    before = {"decodes": {"partial": 3, "final": 1}, "decodes_skipped": 4,
              "decode_batch_size_histogram": {"1": 4}}
    after = {"decodes": {"partial": 9, "final": 3}, "decodes_skipped": 10,
             "decode_batch_size_histogram": {"1": 6, "4": 4}}
    delta = _stats_delta(before, after)
    assert delta == {"decodes": 8, "decodes_skipped": 6, "decode_batches": {"1": 2, "4": 4}}
    assert _mean_batch([delta["decode_batches"]]) == pytest.approx((2 + 16) / 6)
    assert _mean_batch([{}]) is None
