"""Benchmark voicebus on the real models: raw engines, load through the bus, and a peer.

    .venv/bin/python scripts/test_batch_processing.py [--task stt|tts|live|all] [--quick]
        [--json PATH] [--plot PATH] [--rates 0.5x,0.9x] [--no-peer] [--streams 1,4,8,16]

For STT (Whisper) and TTS (Kokoro), in one run and on the same clips and texts:
1. Seed 003's table: batches of 1, 2, 4, 8 on the raw engine in process, then through the
   bus (batch_transcribe / batch_synthesize with the bus pinned to that batch size via
   `configure`): avg time per sample, total, speedup.
2. Load through the bus: closed loop at 1, 2, 4, 8, 16 clients and open loop with Poisson
   arrivals at --rates: requests/s, audio-seconds/s, p50/p95/p99 latency, TTS time to first
   chunk (`stream` + `next_chunk`), batch sizes formed (the `stats` histogram's growth),
   errors.
3. Bus overhead: single-request latency through the bus minus the raw engine's (p50, p99),
   measured in pairs (raw, bus, bus, raw, ...) so that drifting machine load cancels; bus
   throughput at 8 clients over the best raw-engine batch size.
4. Adaptive vs fixed: 8 clients with `dynamic_batching` on, against each pinned batch size,
   interleaved in rounds so that drifting machine load hits them alike; the best pinned
   size of each round is picked from the other rounds (no winner's-curse bias).
5. The peer: the same engines behind Ray Serve `@serve.batch` (the `peer` extra), same
   clients: throughput and p99 ratios, voicebus over peer. Skipped, with the reason in the
   report, when Ray is not installed or --no-peer is given.
6. The HTTP gateway as a transport (bench/gateway.py): the same workload over HTTP and over
   ZeroMQ on the same bus, 8 clients, interleaved rounds: throughput and p99 ratios, HTTP
   over ZeroMQ; TTS time to first audio byte of an HTTP stream against the first chunk over
   ZeroMQ. --no-http skips it; --http-only runs only it (no raw engines, no peer).
7. Live STT streams (bench/live.py; `--task live` runs this stage alone): N microphones
   at once (--streams), each replaying utterances with pauses in 100 ms chunks at real-time
   pace: final latency after the end of speech and partial latency (p50, p95), skipped
   decodes, stream decode batch sizes, and the finals' WER beside that of the same clips
   sent whole with `transcribe`; then the same with batching turned off (one decode per
   forward pass, as a server without cross-stream batching runs), interleaved in rounds:
   the most streams each holds with final p95 <= 1.5 s. --live-websocket adds a third mode:
   the same streams, batched, through the gateway's /v1/realtime WebSocket as OpenAI
   Realtime clients send them (24 kHz pcm16), for what the gateway adds to final latency.

--managers 1,2 runs instead the scale-out stage (bench/managers.py): the same clients
against one and two model managers, each pinned to its own core, in interleaved rounds
(--managers-rounds, default 3): throughput over one manager's with its spread, and the
bus's share of each request's latency (transport, intake, dispatch).

--windows runs instead Whisper's window policy through the bus (bench/windows.py): short
utterances (1-6 s) and a mix with long recordings, at 8 clients, the default policy against
`min_window_s: 30`, interleaved in rounds: throughput, WER and their ratio per round.

--mixed runs instead short requests beside long ones (bench/mixed.py): voice commands (1-4 s,
8 clients), recordings of 2-5 minutes (2 clients), one-sentence TTS replies (4 clients) and
a long text (1 client) at once, on the bus running long requests as units, on the same bus
running every request whole (`unit_scheduling: false`) and on the Ray Serve peer, in
interleaved rounds (--mixed-rounds, default 3), with each short class alone as the
reference: latency p50/p95/p99 and audio-seconds/s per class, and the goals' ratios. About
15 minutes on 2 cores (--quick: one short round).

Every number is measured in the run that prints it; nothing is compared across runs. The
bus, the peer and the raw engine run one after the other, never at the same time. Test
audio is spoken by espeak-ng (scripts/test.sh installs it). Needs the `bench` extra (tqdm,
matplotlib) and, for the peer, the `peer` extra.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from bench import engine as engine_bench  # noqa: E402
from bench import report as report_text  # noqa: E402
from bench.engine import BatchRunner  # noqa: E402
from bench.live import live_stage, live_table  # noqa: E402
from bench.load import Tick  # noqa: E402
from bench.plot import write_plot  # noqa: E402
from bench.stats import parse_rates  # noqa: E402
from bench.suite import (  # noqa: E402
    BATCH_SIZES,
    HEADLINE_CLIENTS,
    Plan,
    bus_stage,
    engine_stage,
    load_stage,
    peer_ratios,
    ratios,
)
from bench.workload import Task, Workload, make_workload  # noqa: E402

from model_manager.config import ModelSpec, load_config  # noqa: E402
from model_manager.engines.base import Engine  # noqa: E402

#: The Ray Serve batching wait: short, as one would set it for interactive speech. The bus's
#: own wait only applies while a batch is filling (a lone request waits 2 ms).
PEER_BATCH_WAIT_MS = 10.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", choices=("stt", "tts", "live", "all"), default="all")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 minutes on 2 cores")
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--plot", type=Path, help="write a PNG of throughput and p99 against clients here")
    parser.add_argument(
        "--rates",
        type=parse_rates,
        help="open-loop arrival rates: requests/s (2.5) or fractions of the measured peak "
        "closed-loop throughput (0.5x); default 0.5x,0.9x (--quick: 0.7x)",
    )
    parser.add_argument(
        "--clients",
        type=lambda s: tuple(int(c) for c in s.split(",")),
        help="closed-loop concurrencies (default 1,2,4,8,16; --quick: 1,8)",
    )
    parser.add_argument("--no-peer", action="store_true", help="skip the Ray Serve peer")
    parser.add_argument("--peer-batch-wait-ms", type=float, default=PEER_BATCH_WAIT_MS)
    parser.add_argument(
        "--no-warmup",
        action="store_true",
        help="start the bus without its batch-size warm-up (--quick never warms up): the "
        "adaptive policy then learns from the pinned-size runs that precede its own",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the Poisson arrivals")
    parser.add_argument("--no-http", action="store_true", help="skip the HTTP gateway comparison")
    parser.add_argument("--http-only", action="store_true",
                        help="only the HTTP gateway against ZeroMQ (starts the bus alone)")
    parser.add_argument(
        "--windows",
        action="store_true",
        help="only Whisper's window policy: short and mixed-length workloads, default vs min_window_s 30",
    )
    parser.add_argument(
        "--streams",
        type=lambda s: tuple(int(c) for c in s.split(",")),
        help="live STT stream counts (default 1,4,8,16; --quick: 1,4)",
    )
    parser.add_argument("--mixed", action="store_true",
                        help="only short requests beside long ones: units vs whole requests vs the peer")
    parser.add_argument("--mixed-rounds", type=int, help="rounds of --mixed (default 3; --quick: 1)")
    parser.add_argument("--managers", help="model manager counts to compare, e.g. 1,2 (runs only that stage)")
    parser.add_argument("--managers-rounds", type=int, default=3)
    parser.add_argument("--managers-clients", type=int, default=8)
    parser.add_argument("--managers-requests", type=int, default=96, help="requests per run")
    parser.add_argument("--live-rounds", type=int, help="rounds of the live stage (default 2; --quick: 1)")
    parser.add_argument("--live-websocket", action="store_true",
                        help="live stage: also run the streams through the gateway's /v1/realtime WebSocket")
    return parser.parse_args(argv)


def managers_main(args: argparse.Namespace) -> int:
    """--managers: bench/managers.py's stage alone, printed and written like the main report."""
    from bench.managers import managers_stage, managers_table

    levels = [int(n) for n in args.managers.split(",")]
    stage = managers_stage(levels, args.managers_rounds, args.managers_clients, args.managers_requests)
    report: dict[str, Any] = {"meta": meta(args), "managers": stage}
    report["meta"]["load_average_end"] = os.getloadavg()[0]
    print(managers_table(stage))
    write_json(args, report)
    return 0


def windows_main(args: argparse.Namespace) -> int:
    """--windows: bench/windows.py's stage alone, printed and written like the main report."""
    from bench.windows import window_stage, window_table

    spec = load_config().models("stt")[0]
    report: dict[str, Any] = {"meta": meta(args), "windows": window_stage(spec, args.quick, lambda _n: None,
                                                                          args.seed)}
    report["meta"]["load_average_end"] = os.getloadavg()[0]
    print(window_table(report["windows"]))
    write_json(args, report)
    return 0


def mixed_main(args: argparse.Namespace) -> int:
    """--mixed: bench/mixed.py's stage alone, printed and written like the main report."""
    from dataclasses import replace

    from bench.mixed import MixPlan, mixed_stage, mixed_table, quick_plan

    config = load_config()
    # The two models share the cores: each engine gets its half (the bus and the peer alike),
    # so that neither oversubscribes them while both run.
    threads = max(1, (os.cpu_count() or 2) // 2)
    configured = {task: config.models(task)[0] for task in ("stt", "tts")}
    specs: dict[Task, ModelSpec] = {
        task: spec.model_copy(update={"options": {**spec.options, "cpu_threads": threads}})
        for task, spec in configured.items()}
    plan = quick_plan() if args.quick else MixPlan()
    if args.mixed_rounds:
        plan = replace(plan, rounds=args.mixed_rounds)
    skipped = peer_skip_reason(args)
    factory = None
    if skipped is None:
        from bench.peer import Peer

        batch = config.batch_processing_config
        factory = lambda: Peer(specs, batch.max_batch_size, args.peer_batch_wait_ms / 1000)  # noqa: E731
    report: dict[str, Any] = {"meta": meta(args)}
    report["mixed"] = mixed_stage(specs, plan, factory, skipped, lambda _n: None, args.seed)
    report["meta"]["load_average_end"] = os.getloadavg()[0]
    print(mixed_table(report["mixed"]))
    write_json(args, report)
    return 0


def make_plan(args: argparse.Namespace) -> Plan:
    quick = args.quick
    levels = args.clients or ((1, HEADLINE_CLIENTS) if quick else (1, 2, 4, 8, 16))
    rates = args.rates or parse_rates("0.7x" if quick else "0.5x,0.9x")
    # --quick is a smoke run (3 minutes on 2 cores): every stage runs and every number of the
    # report is there, from the fewest requests that still form each batch size once.
    return Plan(
        clips=8 if quick else 16,
        table_per_size=2 if quick else 16,
        warmup_items=1 if quick else max(BATCH_SIZES),
        singles=2 if quick else 16,
        levels=tuple(sorted(set(levels))),
        # Streams only matter for time to first chunk, which matters most to a lone client;
        # --quick measures them there alone (each stream is a Kokoro run per sentence).
        stream_levels=(1,) if quick and not args.clients else tuple(sorted(set(levels))),
        min_requests=2 if quick else 24,
        per_client=1 if quick else 3,
        arrivals=4 if quick else 32,
        rates=tuple(rates),
        # --quick compares the adaptive policy with the two ends only.
        compared_sizes=(1, max(BATCH_SIZES)) if quick else BATCH_SIZES,
        rounds=1 if quick else 3,
        compared_requests=HEADLINE_CLIENTS * (1 if quick else 2),
    )


def peer_skip_reason(args: argparse.Namespace) -> str | None:
    """None when the peer can run; else why not, for the report and the console."""
    if args.no_peer:
        return "--no-peer was given"
    from bench.peer import unavailable

    return unavailable()


def run_peer(
    specs: dict[Task, ModelSpec],
    workloads: dict[Task, Workload],
    plan: Plan,
    report: dict[str, Any],
    args: argparse.Namespace,
    tick: Tick,
) -> dict[str, Any]:
    """The peer's closed-loop sweep per task, and its ratios against the bus's rows."""
    from bench.peer import Peer

    batch = load_config().batch_processing_config
    peer = Peer(specs, batch.max_batch_size, args.peer_batch_wait_ms / 1000)
    try:
        result: dict[str, Any] = {"settings": peer.settings}
        for task, workload in workloads.items():
            result[task] = peer_ratios(report[task], load_stage(peer, workload, plan, tick, warm=True))
        return result
    finally:
        peer.stop()


def write_json(args: argparse.Namespace, report: dict[str, Any]) -> None:
    """The report as JSON at --json, when given."""
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))
        print(f"wrote {args.json}")


def meta(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    device = "cuda: " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "quick": args.quick,
        "machine": f"{os.cpu_count()} cores, {device}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        # Thread settings change CPU timings several-fold on a busy machine: record them.
        "threads": {"torch": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        # A busy machine makes every number noisy: the load average says how busy it was.
        "load_average_start": os.getloadavg()[0],
        "argv": sys.argv[1:],
    }


def free_accelerator_memory() -> None:
    """Hand back what this process's dropped engines held on a GPU, for the peer's replicas."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Stages:
    """`with stages("name"):` shows the stage on the progress bar and records its seconds,
    so a report says where a run spent its time."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.bar.set_description(name)
        began = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - began, 1)


def print_tables(report: dict[str, Any]) -> None:
    for task in report["tasks"]:
        entry = report[task]
        print()
        print(
            report_text.batch_table(
                f"{task.upper()} {entry['model']}: raw engine, in process", entry["engine_batch"]
            )
        )
        print()
        print(
            report_text.batch_table(
                f"{task.upper()} {entry['model']}: through the bus, pinned batch size", entry["bus_batch"]
            )
        )
        peer = (report["peer"] or {}).get(task) or {}
        print()
        print(report_text.load_table(f"{task.upper()} load", report_text.load_rows(entry, peer)))
    print()
    print(report_text.summary(report))
    if report.get("http"):
        print()
        print(report_text.http_table(report["http"]))


def load_engines_and_start_bus(
    specs: dict[Task, ModelSpec], warmup: bool, raw: bool = True
) -> tuple[dict[Task, Engine], Any]:
    """The raw engines, loaded in this process while the bus starts beside it (both mostly
    import and read weights; nothing is timed until both are done, and the bus then sits
    idle while the raw engines are measured)."""
    from bench.bus import Bus

    with ThreadPoolExecutor(max_workers=1) as pool:
        starting = pool.submit(Bus, specs, warmup=warmup)
        try:
            engines = {task: engine_bench.load_engine(spec) for task, spec in specs.items() if raw}
        except BaseException:
            starting.result().stop()
            raise
        return engines, starting.result()


def http_rounds(plan: Plan) -> int:
    """Rounds of the HTTP/ZeroMQ comparison: an even number, so each transport goes first
    as often as the other."""
    return 2 * plan.rounds


def http_singles(plan: Plan) -> int:
    """Lone requests per transport: a paired difference needs a few even in a smoke run."""
    return max(plan.singles, 6)


def http_units(plan: Plan, workload: Workload) -> int:
    return http_rounds(plan) * 2 * plan.compared_requests + 2 * http_singles(plan) * len(workload.modes)


def compare_http(bus: Any, workload: Workload, plan: Plan, tick: Tick) -> dict[str, Any]:
    from bench.gateway import compare_transports

    return compare_transports(bus, workload, HEADLINE_CLIENTS, plan.compared_requests, http_rounds(plan),
                              http_singles(plan), tick)


def main_http_only(args: argparse.Namespace, plan: Plan, specs: dict[Task, ModelSpec]) -> int:
    """--http-only: the bus alone (configured policy, no warm-up), HTTP against ZeroMQ."""
    from bench.bus import Bus
    from tqdm import tqdm

    report: dict[str, Any] = {"meta": meta(args), "tasks": list(specs), "http": {}}
    workloads = {task: make_workload(task, plan.clips, args.quick) for task in specs}
    with tqdm(total=sum(http_units(plan, w) for w in workloads.values()), unit="req") as bar:
        stage = Stages(bar)
        with stage("bus starts"):
            bus = Bus(specs, warmup=False)
        try:
            for task, workload in workloads.items():
                with stage(f"{task} http vs zeromq"):
                    report["http"][task] = compare_http(bus, workload, plan, bar.update)
        finally:
            bus.stop()
    report["meta"]["stage_s"] = stage.seconds
    report["meta"]["load_average_end"] = os.getloadavg()[0]
    print()
    print(report_text.http_table(report["http"]))
    problems = report_text.http_problems(report["http"], list(specs))
    for problem in problems:
        print(f"report problem: {problem}")
    write_json(args, report)
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    args = parse_args(argv)
    if args.managers:
        return managers_main(args)
    if args.windows:
        return windows_main(args)
    if args.mixed:
        return mixed_main(args)
    plan = make_plan(args)
    config = load_config()
    live_only = args.task == "live"
    tasks: tuple[Task, ...]
    if args.task == "all":
        tasks = ("stt", "tts")
    else:
        tasks = ("stt",) if live_only else (args.task,)
    specs: dict[Task, ModelSpec] = {t: config.models(t)[0] for t in tasks if config.models(t)}
    for task in set(tasks) - set(specs):
        print(f"no {task} model configured; skipping {task}")
    if args.http_only:
        return main_http_only(args, plan, specs)
    skip_peer = "--task live" if live_only else peer_skip_reason(args)
    live_levels = args.streams or ((1, 4) if args.quick else (1, 4, 8, 16))
    live_rounds = args.live_rounds or (1 if args.quick else 2)
    run_live = "stt" in specs and args.task in ("live", "all")
    report: dict[str, Any] = {
        "meta": meta(args),
        "tasks": list(specs),
        "plan": {
            "clips": plan.clips,
            "table_items_per_size": plan.table_per_size,
            "clients": list(plan.levels),
            "batch_sizes": list(BATCH_SIZES),
            "compared_sizes": list(plan.compared_sizes),
            "comparison_rounds": plan.rounds,
            "comparison_requests_per_round": plan.compared_requests,
            "rates": [str(r) for r in plan.rates],
            "arrivals_per_rate": plan.arrivals,
        },
    }
    if report["meta"]["load_average_start"] > (os.cpu_count() or 1) / 2:
        print(
            f"note: load average {report['meta']['load_average_start']:.1f} at start; timings will be noisy",
            flush=True,
        )
    workloads = {task: make_workload(task, plan.clips, args.quick) for task in specs}
    total = 0 if live_only else sum(
        sum(plan.units(skip_peer is None, "stream" in w.modes).values()) for w in workloads.values())
    total += (3 if args.live_websocket else 2) * live_rounds * sum(live_levels) if run_live else 0
    if not args.no_http and not live_only:
        total += sum(http_units(plan, w) for w in workloads.values())
        report["http"] = {}
    else:
        report["http"] = {"skipped": "--task live" if live_only else "--no-http was given"}
    with tqdm(total=total, unit="req", dynamic_ncols=True) as bar:
        stage = Stages(bar)
        raw: dict[Task, BatchRunner] = {}
        with stage("engines load, bus starts"):
            warmup = not (args.quick or args.no_warmup)
            engines, bus = load_engines_and_start_bus(specs, warmup=warmup, raw=not live_only)
            report["meta"]["bus_log"] = str(bus.log_path)
        try:
            for task, workload in ({} if live_only else workloads).items():
                with stage(f"{task} raw engine"):
                    report[task], raw[task] = engine_stage(engines.pop(task), workload, plan, bar.update)
            for task, workload in ({} if live_only else workloads).items():
                with stage(f"{task} through the bus"):
                    seed = args.seed + tasks.index(task)
                    batching = config.batch_processing_config
                    report[task].update(bus_stage(bus, raw[task], workload, plan, batching, seed, bar.update))
                    report[task].update(ratios(report[task]))
            if not args.no_http and not live_only:
                for task, workload in workloads.items():
                    with stage(f"{task} http vs zeromq"):
                        report["http"][task] = compare_http(bus, workload, plan, bar.update)
            if run_live:
                with stage("live STT streams"):
                    report["live"] = live_stage(bus, live_levels, live_rounds, progress=bar.update,
                                                websocket=args.live_websocket)
        finally:
            bus.stop()
        raw.clear()  # the in-process engines: free their memory before the peer loads its own
        free_accelerator_memory()
        if skip_peer is None:
            with stage("peer (Ray Serve)"):
                try:
                    report["peer"] = run_peer(specs, workloads, plan, report, args, bar.update)
                except Exception as exc:  # the peer is optional: keep the bus's results
                    traceback.print_exc()
                    skip_peer = f"Ray Serve failed: {type(exc).__name__}: {exc}"
        if skip_peer is not None:
            print(f"peer skipped: {skip_peer}", flush=True)
            report["peer"] = {"skipped": skip_peer, **{task: None for task in specs}}
    report["meta"]["stage_s"] = stage.seconds
    report["meta"]["load_average_end"] = os.getloadavg()[0]
    if not live_only:
        print_tables(report)
    if report.get("live"):
        print()
        print(live_table(report["live"]))
    problems = [] if live_only else report_text.validate_report(report)
    for problem in problems:
        print(f"report problem: {problem}")
    write_json(args, report)  # problems or not: keep the data
    if args.plot and not live_only:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        write_plot(report, args.plot)
        print(f"wrote {args.plot}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
