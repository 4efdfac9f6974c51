"""The mixed-workload benchmark's arithmetic (scripts/bench/mixed.py): pure, no bus."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from bench.mixed import CLASSES, goals, mixed_table, spread, summarize_rounds  # noqa: E402


def _row(p95: float, rate: float) -> dict:
    return {"requests": 10, "succeeded": 10, "errors": {}, "wall_s": 10.0, "audio_s_per_s": rate,
            "p50_ms": p95 / 2, "p95_ms": p95, "p99_ms": p95 * 1.1}


def _round(units_short: float, whole_short: float, peer_short: float, alone: float,
           long_units: float, long_whole: float) -> dict:
    def system(short: float) -> dict:
        return {c.name: _row(short if not c.long else 30_000.0, 5.0) for c in CLASSES}

    return {
        "order": ["units", "whole", "peer"], "load_average": 1.0,
        "mixed": {"units": system(units_short), "whole": system(whole_short), "peer": system(peer_short)},
        "alone": {"stt_short": _row(alone, 2.0), "tts_short": _row(alone, 1.0)},
        "shorts_together": {"stt_short": _row(alone * 1.5, 2.0), "tts_short": _row(alone * 1.5, 1.0)},
        "stt_long_alone": {"units": _row(5000.0, long_units), "whole": _row(5000.0, long_whole)},
        "long_texts_equal": True,
    }


def test_spread_is_median_and_range_of_what_was_measured():
    assert spread([3.0, None, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0}
    assert spread([None]) == {"median": None, "min": None, "max": None}


def test_goals_are_per_round_ratios_with_their_spread():
    rounds = [_round(600, 6000, 5000, 400, 50.0, 51.0), _round(900, 8000, 7000, 500, 48.0, 50.0),
              _round(700, 7000, 6000, 300, 52.0, 50.0)]
    result = goals(rounds)
    assert result["stt_short_p95_units_mixed_over_alone"] == {"median": 1.8, "min": 1.5, "max": 2.333}
    assert result["stt_short_p95_units_over_peer"]["median"] == 0.12
    assert result["stt_long_throughput_units_over_whole_alone"]["min"] == 0.96
    assert all(result["met"].values()) and len(result["met"]) == 5
    assert result["long_texts_equal_every_round"] is True
    summary = summarize_rounds(rounds)
    assert summary["units"]["stt_short"]["p95_ms"] == {"median": 700.0, "min": 600.0, "max": 900.0}
    classes = {c.name: {"task": c.task, "clients": c.clients} for c in CLASSES}
    report = {"plan": {"rounds": 3, "classes": classes, "stt_long_seconds": [135.0, 195.0],
                       "stt_short_seconds": [1.1, 3.9], "tts_long_chars": 571},
              "load_average_start": 1.0, "load_average_end": 1.0, "peer": {"settings": {}},
              "rounds": rounds, "summary": summary, "goals": result}
    table = mixed_table(report)
    assert "stt_short_p95_units_mixed_over_alone: 1.8 (1.5-2.333)" in table


def test_a_goal_without_measurements_is_unknown_not_met():
    rounds = [_round(600, 6000, 5000, 400, 50.0, 51.0)]
    rounds[0]["alone"]["stt_short"]["p95_ms"] = None
    assert goals(rounds)["met"]["stt_short_p95_within_2x_alone"] is None
