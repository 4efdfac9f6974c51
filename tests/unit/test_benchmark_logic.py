"""The benchmark's own logic (scripts/bench): percentiles, Poisson schedules, histogram deltas,
rates, the load generators on fake connections, and the report's schema. No models, no sockets."""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from bench import report as report_mod  # noqa: E402
from bench.engine import batch_table, best_throughput, table_items  # noqa: E402
from bench.load import Outcome, Sample, closed_loop, open_loop, summarize  # noqa: E402
from bench.stats import (  # noqa: E402
    Rate,
    closest,
    histogram_delta,
    latency_summary,
    mean_batch_size,
    parse_rates,
    percentile,
    poisson_schedule,
    ratio,
)
from bench.suite import (  # noqa: E402
    Plan,
    adaptive_vs_best_fixed,
    compare_fixed_and_adaptive,
    paired_singles,
    peer_ratios,
    ratios,
)
from bench.workload import Workload  # noqa: E402

# --- percentiles ---------------------------------------------------------------------------


def test_percentile_interpolates_linearly_like_numpy():
    values = [0.4, 0.1, 0.3, 0.2]
    assert percentile(values, 50) == pytest.approx(0.25)
    assert percentile(values, 0) == pytest.approx(0.1)
    assert percentile(values, 100) == pytest.approx(0.4)
    assert percentile(list(range(101)), 99) == pytest.approx(99.0)
    assert percentile(values, 95) == pytest.approx(float(np.percentile(values, 95)))


def test_percentile_of_nothing_is_none_not_zero():
    assert percentile([], 50) is None
    assert latency_summary([]) == {"p50_ms": None, "p95_ms": None, "p99_ms": None}


def test_percentile_rejects_q_out_of_range():
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_latency_summary_is_in_milliseconds_with_prefix():
    summary = latency_summary([0.1] * 10, prefix="ttfc_")
    assert summary == {
        "ttfc_p50_ms": pytest.approx(100.0),
        "ttfc_p95_ms": pytest.approx(100.0),
        "ttfc_p99_ms": pytest.approx(100.0),
    }


# --- Poisson schedule ----------------------------------------------------------------------


def test_poisson_schedule_is_reproducible_for_a_seed_and_differs_across_seeds():
    a = poisson_schedule(5.0, 50, np.random.default_rng(7))
    b = poisson_schedule(5.0, 50, np.random.default_rng(7))
    c = poisson_schedule(5.0, 50, np.random.default_rng(8))
    assert a == b
    assert a != c


def test_poisson_schedule_is_strictly_increasing_from_after_zero():
    offsets = poisson_schedule(100.0, 1000, np.random.default_rng(0))
    assert len(offsets) == 1000
    assert offsets[0] > 0
    assert bool(np.all(np.diff(offsets) > 0))


def test_poisson_schedule_has_exponential_gaps_at_the_rate():
    rate = 4.0
    offsets = poisson_schedule(rate, 20_000, np.random.default_rng(1))
    gaps = np.diff([0.0, *offsets])
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.03)
    # An exponential distribution's standard deviation equals its mean (a fixed-interval
    # or uniform schedule would fail this).
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)
    # Arrivals in 1 s windows are Poisson: variance equals mean.
    counts = np.bincount(np.floor(offsets).astype(int))[:-1]
    assert counts.var() / counts.mean() == pytest.approx(1.0, abs=0.1)


@pytest.mark.parametrize("rate", [0.0, -1.0, math.inf, math.nan])
def test_poisson_schedule_rejects_a_rate_that_is_not_positive(rate):
    with pytest.raises(ValueError):
        poisson_schedule(rate, 3, np.random.default_rng(0))


def test_poisson_schedule_of_no_requests_is_empty():
    assert poisson_schedule(1.0, 0, np.random.default_rng(0)) == []


# --- histogram deltas ----------------------------------------------------------------------


def test_histogram_delta_counts_only_what_grew_and_sorts_sizes_numerically():
    before = {"1": 5, "2": 3, "8": 1}
    after = {"1": 5, "2": 4, "8": 3, "10": 2, "4": 1}
    assert histogram_delta(before, after) == {"2": 1, "4": 1, "8": 2, "10": 2}
    assert list(histogram_delta(before, after)) == ["2", "4", "8", "10"]


def test_histogram_delta_from_nothing_is_the_histogram():
    assert histogram_delta({}, {"3": 2}) == {"3": 2}
    assert histogram_delta({"3": 2}, {"3": 2}) == {}


def test_histogram_delta_refuses_a_counter_that_went_down():
    # The server restarted between the two stats calls: the delta would be meaningless.
    with pytest.raises(ValueError, match="went down"):
        histogram_delta({"4": 3}, {"4": 1})


def test_mean_batch_size():
    assert mean_batch_size({"1": 2, "4": 2}) == pytest.approx(2.5)
    assert mean_batch_size({}) is None


# --- rates and ratios ----------------------------------------------------------------------


def test_parse_rates_absolute_and_relative():
    assert parse_rates("2, 0.5x,3/s") == [Rate(2.0), Rate(0.5, relative=True), Rate(3.0)]
    assert Rate(0.5, relative=True).resolve(8.0) == pytest.approx(4.0)
    assert Rate(2.0).resolve(None) == 2.0
    assert str(Rate(0.5, relative=True)) == "0.5x"


@pytest.mark.parametrize("text", ["", "fast", "0", "-1", "2,,3", "nanx", "infx"])
def test_parse_rates_rejects_nonsense(text):
    with pytest.raises(ValueError):
        parse_rates(text)


def test_a_relative_rate_needs_a_measured_capacity():
    with pytest.raises(ValueError):
        Rate(0.5, relative=True).resolve(None)
    with pytest.raises(ValueError):
        Rate(0.5, relative=True).resolve(0.0)


def test_ratio_is_none_without_both_numbers():
    assert ratio(3.0, 2.0) == pytest.approx(1.5)
    assert ratio(None, 2.0) is None
    assert ratio(3.0, 0.0) is None
    assert ratio(3.0, None) is None
    assert ratio(math.nan, 1.0) is None


def test_closest_prefers_the_exact_then_the_larger_neighbour():
    assert closest([1, 2, 4, 8, 16], 8) == 8
    assert closest([1, 4, 16], 8) == 4
    assert closest([6, 10], 8) == 10


# --- load generators on fake connections --------------------------------------------------

WORKLOAD = Workload("tts", tuple({"text": f"item {i}"} for i in range(5)))


class FakeConnection:
    """Answers at once; fails items whose text ends in an odd digit when `fail_odd`."""

    def __init__(
        self, seen: list[str], lock: threading.Lock, fail_odd: bool = False, delay_s: float = 0.0
    ) -> None:
        self.seen, self.lock, self.fail_odd, self.delay_s = seen, lock, fail_odd, delay_s
        self.closed = False

    def call(self, item: dict[str, Any]) -> Outcome:
        time.sleep(self.delay_s)
        with self.lock:
            self.seen.append(item["text"])
        failed = self.fail_odd and int(item["text"][-1]) % 2 == 1
        now = time.perf_counter()
        return Outcome(end=now, first=now, audio_s=1.0, error="inference_failed" if failed else None)

    def close(self) -> None:
        self.closed = True


def test_closed_loop_sends_each_request_once_cycling_through_the_items():
    seen, lock, made = [], threading.Lock(), []

    def connect():
        made.append(FakeConnection(seen, lock))
        return made[-1]

    row = closed_loop(connect, WORKLOAD, clients=3, requests=12, tick=lambda n: None)
    assert row["clients"] == 3 and row["requests"] == 12 and row["succeeded"] == 12
    assert sorted(seen) == sorted(f"item {i % 5}" for i in range(12))
    assert len(made) == 3 and all(c.closed for c in made)
    assert row["throughput_rps"] > 0 and row["audio_s_per_s"] > 0


def test_closed_loop_reports_errors_by_code_and_counts_only_successes():
    seen, lock = [], threading.Lock()
    row = closed_loop(lambda: FakeConnection(seen, lock, fail_odd=True), WORKLOAD, 2, 10, lambda n: None)
    # items 0..9 cycle over texts 0..4: texts 1 and 3 fail, twice each
    assert row["errors"] == {"inference_failed": 4}
    assert row["succeeded"] == 6


def test_closed_loop_surfaces_a_crashing_connection():
    class Broken(FakeConnection):
        def call(self, item):
            raise RuntimeError("bug in the client")

    with pytest.raises(RuntimeError, match="bug in the client"):
        closed_loop(lambda: Broken([], threading.Lock()), WORKLOAD, 2, 4, lambda n: None)


def test_open_loop_sends_every_arrival_and_counts_latency_from_the_schedule():
    seen, lock = [], threading.Lock()
    ticks = []
    offsets = [0.001 * (i + 1) for i in range(8)]
    row = open_loop(lambda: FakeConnection(seen, lock, delay_s=0.02), WORKLOAD, offsets, ticks.append)
    assert len(seen) == 8 and sum(ticks) == 8
    assert row["offered_rps"] == pytest.approx(8 / 0.008)
    assert row["p50_ms"] >= 20.0  # the connection's own 20 ms at least


def test_summarize_counts_successes_and_time_to_first_chunk():
    samples = [
        Sample(0.0, Outcome(end=1.0, first=0.25, audio_s=2.0)),
        Sample(0.0, Outcome(end=2.0, first=0.5, audio_s=2.0)),
        Sample(0.0, Outcome(end=0.1, error="timeout")),
    ]
    row = summarize(samples, wall_s=2.0)
    assert row["requests"] == 3 and row["succeeded"] == 2
    assert row["throughput_rps"] == pytest.approx(1.0)
    assert row["audio_s_per_s"] == pytest.approx(2.0)
    assert row["errors"] == {"timeout": 1}
    assert row["p50_ms"] == pytest.approx(1500.0)
    assert row["ttfc_p50_ms"] == pytest.approx(375.0)
    assert "ttfc_p50_ms" not in summarize([Sample(0.0, Outcome(end=1.0))], 1.0)


# --- the batch table -----------------------------------------------------------------------


def test_batch_table_times_consecutive_batches_with_hooks_per_size():
    calls, events = [], []

    def run(items):
        calls.append(len(items))

    table = batch_table(
        run,
        [{"n": i} for i in range(8)],
        (1, 2, 4, 8),
        lambda n: None,
        before=lambda size: events.append(("before", size)),
        after=lambda size: {"batch_sizes": {str(size): 8 // size}},
    )
    assert calls == [8] + [1] * 8 + [2] * 4 + [4] * 2 + [8]  # the warm-up batch first
    assert list(table) == ["1", "2", "4", "8"]
    assert events == [("before", 1), ("before", 2), ("before", 4), ("before", 8)]
    assert table["4"]["batch_sizes"] == {"4": 2}
    assert table["1"]["speedup"] == pytest.approx(1.0)
    for row in table.values():
        assert row["per_item_s"] == pytest.approx(row["total_s"] / 8)
    size, rps = best_throughput(table)
    assert rps == pytest.approx(1 / table[str(size)]["per_item_s"])


def test_batch_table_per_size_runs_whole_batches_cycling_through_the_items():
    seen: list[list[int]] = []
    table = batch_table(
        lambda items: seen.append([item["n"] for item in items]),
        [{"n": i} for i in range(3)],
        (1, 2, 4, 8),
        lambda n: None,
        warmup_items=0,
        per_size=2,
    )
    assert seen == [[0], [1], [0, 1], [0, 1, 2, 0], [0, 1, 2, 0, 1, 2, 0, 1]]
    assert {size: row["items"] for size, row in table.items()} == {"1": 2, "2": 2, "4": 4, "8": 8}
    assert table_items((1, 2, 4, 8), 2) == 16 and table_items((1, 2, 4, 8), 16) == 64


def test_batch_table_needs_items():
    with pytest.raises(ValueError):
        batch_table(lambda items: None, [], (1, 4), lambda n: None)


class FakeBus:
    """Pins and restores like bench.bus.Bus, logging each; every pinned or adaptive batch
    "forms" as one batch of the current size per request group."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.size = "adaptive"
        self.batches: dict[str, int] = {}
        self.lock = threading.Lock()

    def pin_batch_size(self, task: str, size: int) -> None:
        self.log.append(str(size))
        self.size = str(size)

    def restore(self, task: str, config: Any) -> None:
        self.log.append("adaptive")
        self.size = "adaptive"

    def histogram(self, task: str) -> dict[str, int]:
        return dict(self.batches)

    def connection(self, workload: Workload, mode: str) -> FakeConnection:
        bus = self

        class Counting(FakeConnection):
            def call(self, item: dict[str, Any]) -> Outcome:
                with bus.lock:
                    key = "1" if bus.size == "1" else "8"
                    bus.batches[key] = bus.batches.get(key, 0) + 1
                return super().call(item)

        return Counting([], threading.Lock())


def test_fixed_and_adaptive_interleave_in_rounds_and_merge_each_configuration():
    bus = FakeBus()
    plan = dataclasses.replace(quick_plan(), compared_sizes=(1, 8), rounds=2, compared_requests=16)
    got = compare_fixed_and_adaptive(bus, WORKLOAD, plan, None, lambda n: None)
    # round 1 in order, round 2 rotated, and the bus left on the configured policy
    assert bus.log == ["1", "8", "adaptive", "adaptive", "1", "8", "adaptive"]
    assert set(got["fixed"]) == {"1", "8"} and got["rounds"] == 2
    for row in [*got["fixed"].values(), got["adaptive"]]:
        assert row["clients"] == 8 and row["requests"] == 32 and row["succeeded"] == 32
        assert row["throughput_rps"] > 0
        assert [r["succeeded"] for r in row["by_round"]] == [16, 16]
    assert got["fixed"]["1"]["batch_sizes"] == {"1": 32}


def quick_plan() -> Plan:
    return Plan(
        clips=8,
        table_per_size=2,
        warmup_items=1,
        singles=2,
        levels=(1, 8),
        stream_levels=(1,),
        min_requests=2,
        per_client=1,
        arrivals=4,
        rates=(Rate(0.7, relative=True),),
        compared_sizes=(1, 8),
        rounds=1,
        compared_requests=8,
    )


# --- ratios of a task and of the peer --------------------------------------------------------


def load_row(clients: int, rps: float, p99: float = 100.0) -> dict[str, Any]:
    return {"clients": clients, "throughput_rps": rps, "p50_ms": 50.0, "p99_ms": p99}


def compared_row(*rates: float) -> dict[str, Any]:
    """A row of the adaptive-vs-fixed comparison: one round of one second per rate."""
    by_round = [{"succeeded": r, "wall_s": 1.0} for r in rates]
    return {**load_row(8, sum(rates) / len(rates)), "by_round": by_round}


def test_the_best_fixed_size_is_picked_from_the_other_rounds():
    # Two pinned sizes that are equal but for noise, and an adaptive policy as fast as them:
    # picking the best in the same rounds would make adaptive look slower (10 / 10.25).
    compared = {
        "fixed": {"1": compared_row(11.0, 9.5), "2": compared_row(9.0, 10.5)},
        "adaptive": compared_row(10.0, 10.0),
    }
    got, size, how = adaptive_vs_best_fixed(compared)
    assert how == "cross-fitted over rounds" and size == 1
    # round 1 is judged by size 2 (best in round 2): 9.0; round 2 by size 1: 9.5
    assert got == pytest.approx(20.0 / 18.5)


def test_with_one_round_the_best_fixed_size_is_the_best_measured():
    compared = {"fixed": {"1": compared_row(8.0), "2": compared_row(10.0)}, "adaptive": compared_row(9.0)}
    assert adaptive_vs_best_fixed(compared) == (pytest.approx(0.9), 2, "same round")


def task_entry() -> dict[str, Any]:
    return {
        "model": "m",
        "engine_batch": {
            s: {"per_item_s": 0.1, "total_s": 0.8, "speedup": 1.0} for s in ("1", "2", "4", "8")
        },
        "bus_batch": {s: {"per_item_s": 0.12, "total_s": 0.96, "speedup": 1.0} for s in ("1", "2", "4", "8")},
        "raw_single_ms": {"p50_ms": 100.0, "p95_ms": 110.0, "p99_ms": 120.0},
        "bus_single_ms": {"p50_ms": 104.0, "p95_ms": 115.0, "p99_ms": 131.0},
        "best_raw": {"batch_size": 4, "throughput_rps": 10.0},
        "fixed_vs_adaptive": {
            "clients": 8,
            "fixed": {"1": compared_row(6.0), "4": compared_row(9.0)},
            "adaptive": compared_row(9.9),
        },
        "closed_loop": [load_row(1, 5.0), load_row(8, 9.9)],
        "open_loop": [],
    }


def test_task_ratios_come_from_the_rows_of_the_run():
    entry = task_entry()
    got = ratios(entry)
    assert got["bus_overhead_ms_p50"] == pytest.approx(4.0)
    assert got["bus_overhead_ms_p99"] == pytest.approx(11.0)
    assert got["bus_vs_raw_throughput"] == pytest.approx(0.99)
    assert got["adaptive_vs_best_fixed"] == pytest.approx(9.9 / 9.0)
    assert entry["fixed_vs_adaptive"]["best_fixed_size"] == 4


def test_peer_ratios_are_voicebus_over_peer_at_each_shared_concurrency():
    bus = {"closed_loop": [load_row(1, 4.0, 100.0), load_row(8, 10.0, 400.0)]}
    peer = {"closed_loop": [load_row(1, 2.0, 200.0), load_row(8, 5.0, 800.0), load_row(16, 5.0, 900.0)]}
    got = peer_ratios(bus, peer)
    assert got["clients"] == 8
    assert got["throughput_ratio"] == pytest.approx(2.0)
    assert got["p99_ratio"] == pytest.approx(0.5)
    assert [r["clients"] for r in got["by_clients"]] == [1, 8]
    assert got["closed_loop"] == peer["closed_loop"]  # the peer's own rows travel along
    assert "ttfc_p50_ratio" not in got


def test_peer_ratios_compare_time_to_first_chunk_of_streams():
    bus = {
        "closed_loop": [load_row(8, 1.0)],
        "closed_loop_stream": [{**load_row(8, 0.5), "ttfc_p50_ms": 300.0}],
    }
    peer = {
        "closed_loop": [load_row(8, 1.0)],
        "closed_loop_stream": [{**load_row(8, 0.5), "ttfc_p50_ms": 600.0}],
    }
    got = peer_ratios(bus, peer)
    assert got["ttfc_p50_ratio"] == pytest.approx(0.5) and got["ttfc_clients"] == 8


def test_plan_sizes_the_load():
    plan = dataclasses.replace(
        quick_plan(),
        table_per_size=8,
        singles=4,
        min_requests=8,
        per_client=3,
        rates=(Rate(1.0), Rate(0.5, relative=True)),
        compared_sizes=(1, 2, 4, 8),
        rounds=2,
    )
    assert plan.requests(1) == 8 and plan.requests(8) == 24
    units = plan.units(peer=True)
    assert units["engine"] == 1 + 8 * 4
    # table, comparison (2 rounds of 4 sizes + adaptive at 8 clients, which is also the
    # sweep's 8-client row), singles, the sweep's 1-client row, open loop
    assert units["bus"] == (1 + 8 * 4) + 2 * 5 * 8 + 4 + 8 + 4 * 2
    assert units["peer"] == 1 + 8 + 24
    assert plan.units(peer=False)["peer"] == 0
    streamed = plan.units(peer=True, streams=True)
    assert streamed["peer"] == units["peer"] + 8 and streamed["bus"] == units["bus"] + 8


def test_the_quick_plan_sends_few_requests():
    units = quick_plan().units(peer=True, streams=True)
    assert units == {"engine": 1 + 16, "bus": 17 + 3 * 8 + 2 + 2 + 2 + 4, "peer": 1 + 10 + 2}


def test_paired_singles_alternate_sides_and_keep_errors_apart():
    order = []
    seen, lock = [], threading.Lock()

    class Recording(FakeConnection):
        def call(self, item):
            order.append("system")
            return super().call(item)

    def raw(items):
        assert len(items) == 1
        order.append("raw")

    connection = Recording(seen, lock, fail_odd=True)
    got = paired_singles(raw, connection, WORKLOAD, 4, lambda n: None)
    assert order == ["raw", "system", "system", "raw", "raw", "system", "system", "raw"]
    assert got["single_errors"] == {"inference_failed": 2}  # items 1 and 3
    assert got["raw_single_ms"]["p50_ms"] is not None and got["bus_single_ms"]["p50_ms"] is not None
    assert connection.closed


# --- the report's schema -------------------------------------------------------------------


def valid_report() -> dict[str, Any]:
    entry = task_entry()
    entry.update(ratios(entry))
    return {
        "tasks": ["stt", "tts"],
        "stt": entry,
        "tts": copy.deepcopy(entry),
        "peer": {t: {"clients": 8, "throughput_ratio": 1.2, "p99_ratio": 0.8} for t in ("stt", "tts")},
    }


def test_a_complete_report_is_valid():
    assert report_mod.validate_report(valid_report()) == []


def test_a_skipped_peer_needs_a_reason():
    report = valid_report()
    report["peer"] = {"skipped": "Ray Serve is not installed", "stt": None, "tts": None}
    assert report_mod.validate_report(report) == []
    report["peer"] = {"skipped": ""}
    assert report_mod.validate_report(report) == ["peer.skipped: must say why"]


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("stt", "engine_batch", "8"), None, "stt.engine_batch.8.per_item_s"),
        (("tts", "bus_batch", "2", "per_item_s"), 0.0, "tts.bus_batch.2.per_item_s"),
        (("stt", "bus_overhead_ms_p50"), None, "stt.bus_overhead_ms_p50"),
        (("tts", "bus_vs_raw_throughput"), math.nan, "tts.bus_vs_raw_throughput"),
        (("stt", "adaptive_vs_best_fixed"), "1.1", "stt.adaptive_vs_best_fixed"),
        (("peer", "tts", "p99_ratio"), None, "peer.tts.p99_ratio"),
        (("peer", "stt"), None, "peer.stt: missing"),
        (("tasks",), ["asr"], "tasks must be"),
    ],
)
def test_each_broken_field_is_named(path, value, expected):
    report = valid_report()
    node = report
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    problems = report_mod.validate_report(report)
    assert any(expected in p for p in problems), problems


def test_nan_anywhere_is_not_strict_json():
    report = valid_report()
    report["stt"]["closed_loop"][0]["p99_ms"] = math.nan
    assert any("strict JSON" in p for p in report_mod.validate_report(report))


def test_one_task_alone_is_a_valid_report():
    report = valid_report()
    del report["tts"], report["peer"]["tts"]
    report["tasks"] = ["stt"]
    assert report_mod.validate_report(report) == []


def test_load_rows_cover_both_systems_both_modes_pinned_sizes_and_open_loop():
    entry = task_entry()
    entry["closed_loop_stream"] = [{**load_row(8, 0.5), "ttfc_p50_ms": 300.0}]
    entry["open_loop"] = [{**load_row(0, 1.0), "rate": "0.5x", "rate_rps": 2.0}]
    peer = {"closed_loop": [load_row(8, 1.0)]}
    labels = [(system, load) for system, load, _ in report_mod.load_rows(entry, peer)]
    assert labels == [
        ("voicebus", "1 clients"),
        ("voicebus", "8 clients"),
        ("voicebus", "8 clients, streams"),
        ("peer", "8 clients"),
        ("voicebus", "pinned to 1, 8 clients"),
        ("voicebus", "pinned to 4, 8 clients"),
        ("voicebus", "open 0.5x = 2.00/s"),
    ]
    text = report_mod.load_table("TTS load", report_mod.load_rows(entry, peer))
    assert "| voicebus | 8 clients, streams | 0.50 |" in text


def test_the_summary_quotes_time_to_first_chunk_only_where_streams_ran():
    report = valid_report()
    report["peer"]["tts"]["ttfc_p50_ratio"] = 0.8
    lines = report_mod.summary(report).splitlines()
    peer_lines = [line for line in lines if "voicebus/peer" in line]
    assert "first chunk 0.80x" in peer_lines[1] and "first chunk" not in peer_lines[0]


def test_the_printed_table_has_seed_003s_columns():
    text = report_mod.batch_table("STT", valid_report()["stt"]["engine_batch"])
    assert "| Batch Size | Avg Time/Sample | Total Time | Speedup |" in text
    assert "| 1 (single) | 0.100s" in text


def test_the_peer_says_how_to_get_ray_when_it_is_missing(monkeypatch):
    from bench import peer

    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed: import raises
    reason = peer.unavailable()
    assert reason is not None and "pip install" in reason and "peer" in reason
