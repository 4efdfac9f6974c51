"""Benchmark batching on the real models: in-process engines, then load through the bus.

    .venv/bin/python scripts/test_batch_processing.py [--task stt|tts|all] [--quick] [--json PATH]

1. Engine table (seed 003's format): the same clips run in batches of 1, 2, 4 and 8 on the
   raw engine, in process: avg time per sample, total, speedup over batch size 1.
2. Through the bus: closed-loop clients at several concurrencies against a bus started on
   free ports: throughput, latency percentiles, and the batch sizes the bus formed.
3. Ratios measured in this one run: bus overhead (single request through the bus minus the
   raw engine's time for one item) and bus throughput at the highest concurrency over the
   best raw-engine throughput.

Every number is measured in the run that prints it; nothing is compared across runs.
Test audio is spoken by espeak-ng (scripts/test.sh installs it).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from agents.model_client import ClientConfig, ModelClient  # noqa: E402
from model_manager.config import load_config  # noqa: E402
from model_manager.engines.registry import build_engine  # noqa: E402

BATCH_SIZES = (1, 2, 4, 8)
TTS_TEXTS = [
    "The weather today is sunny with a light breeze.",
    "Please remember to lock the door when you leave.",
    "Our meeting has been moved to three in the afternoon.",
    "The library opens at nine and closes at six.",
    "He finished the marathon in just under four hours.",
    "Fresh vegetables are delivered every Tuesday morning.",
    "The museum has a new exhibition about ancient Egypt.",
    "Turn left at the next corner and walk two blocks.",
]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def engine_items(task: str, count: int) -> list[dict[str, Any]]:
    if task == "stt":
        from speech import SENTENCES, speak

        return [{"audio": speak(SENTENCES[i % len(SENTENCES)])} for i in range(count)]
    return [{"text": TTS_TEXTS[i % len(TTS_TEXTS)]} for i in range(count)]


def wire_item(task: str, item: dict[str, Any], index: int) -> dict[str, Any]:
    if task == "stt":
        return {"audio_data": item["audio"], "sample_rate": 16000, "request_id": index}
    return {"text": item["text"], "request_id": index}


def bench_engine(task: str, items: list[dict[str, Any]], sizes: tuple[int, ...]) -> dict[str, Any]:
    config = load_config()
    spec = config.models(task)[0]
    engine = build_engine(spec)
    prepared = [engine.prepare(it) for it in items]
    engine.run_batch(prepared[:1])  # warm-up: first-call allocations are not batching
    table: dict[str, Any] = {}
    for size in sizes:
        started = time.perf_counter()
        for i in range(0, len(prepared), size):
            engine.run_batch(prepared[i : i + size])
        total = time.perf_counter() - started
        table[str(size)] = {"per_item_s": total / len(prepared), "total_s": total}
    base = table[str(sizes[0])]["per_item_s"]
    for row in table.values():
        row["speedup"] = base / row["per_item_s"]
    return {"model": spec.name, "engine_batch": table}


def print_engine_table(task: str, result: dict[str, Any]) -> None:
    print(f"\n{task.upper()} engine {result['model']}, in process")
    print("| Batch Size | Avg Time/Sample | Total Time | Speedup |")
    print("|------------|-----------------|------------|---------|")
    for size, row in result["engine_batch"].items():
        label = f"{size} (single)" if size == "1" else size
        print(
            f"| {label:<10} | {row['per_item_s']:.3f}s          | {row['total_s']:.2f}s      "
            f"| {row['speedup']:.2f}x   |"
        )


def closed_loop(send: Callable[[int], dict[str, Any]], clients: int, per_client: int) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()

    def run(client: int) -> None:
        nonlocal errors
        for n in range(per_client):
            started = time.perf_counter()
            reply = send(client * per_client + n)
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                errors += reply.get("status") != "success"

    started = time.perf_counter()
    threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": errors,
        "throughput_rps": len(latencies) / wall,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p95_ms": percentile(latencies, 95) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
    }


def bench_bus(
    task: str,
    items: list[dict[str, Any]],
    concurrencies: tuple[int, ...],
    per_client: int,
    engine_result: dict[str, Any],
) -> dict[str, Any]:
    import tempfile

    from conftest import start_bus, stop_bus

    bus = start_bus(Path(tempfile.mkdtemp(prefix="voicebus-bench-")))
    address = bus.stt_address if task == "stt" else bus.tts_address
    client = ModelClient(ClientConfig(stt_address=bus.stt_address, tts_address=bus.tts_address))
    action = "transcribe" if task == "stt" else "synthesize"

    def send(index: int) -> dict[str, Any]:
        item = wire_item(task, items[index % len(items)], index)
        if task == "stt":
            from agents.model_client import encode_audio

            item["audio_data"], item["dtype"] = encode_audio(item["audio_data"])
        else:
            item["format"] = "pcm"
        return client.request(address, {"action": action, **item})

    try:
        send(0)  # warm-up
        rows = []
        for clients in concurrencies:
            before = client.request(address, {"action": "stats"})
            row = closed_loop(send, clients, per_client)
            after = client.request(address, {"action": "stats"})
            row["batch_sizes"] = histogram_delta(before, after)
            rows.append(row)
            print(
                f"  {task} bus: {clients:>2} clients  {row['throughput_rps']:.2f} req/s  "
                f"p50 {row['p50_ms']:.0f} ms  p99 {row['p99_ms']:.0f} ms  batches {row['batch_sizes']}",
                flush=True,
            )
    finally:
        stop_bus(bus)
    raw_one = engine_result["engine_batch"]["1"]["per_item_s"] * 1000
    single = rows[0]
    best_raw_rps = max(1.0 / r["per_item_s"] for r in engine_result["engine_batch"].values())
    return {
        "load": rows,
        "bus_overhead_ms_p50": single["p50_ms"] - raw_one,
        "bus_overhead_ms_p99": single["p99_ms"] - raw_one,
        "bus_vs_raw_throughput": rows[-1]["throughput_rps"] / best_raw_rps,
    }


def histogram_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    def hist(stats: dict[str, Any]) -> dict[str, int]:
        models = stats.get("models") or [{}]
        return models[0].get("batch_size_histogram", {})

    b, a = hist(before), hist(after)
    return {k: v - b.get(k, 0) for k, v in a.items() if v - b.get(k, 0)}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", choices=("stt", "tts", "all"), default="all")
    parser.add_argument("--quick", action="store_true", help="fewer clips and requests")
    parser.add_argument("--json", type=Path, help="write the measured numbers here")
    args = parser.parse_args()
    tasks = ("stt", "tts") if args.task == "all" else (args.task,)
    config = load_config()
    count = 8 if args.quick else 16
    concurrencies = (1, 4, 8) if args.quick else (1, 2, 4, 8, 16)
    per_client = 2 if args.quick else 4
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "quick": args.quick}
    for task in tasks:
        if not config.models(task):
            print(f"no {task} model configured; skipping")
            continue
        items = engine_items(task, count)
        engine_result = bench_engine(task, items, BATCH_SIZES)
        print_engine_table(task, engine_result)
        bus_result = bench_bus(task, items, concurrencies, per_client, engine_result)
        report[task] = {**engine_result, **bus_result}
        print(
            f"  {task}: bus overhead p50 {bus_result['bus_overhead_ms_p50']:.1f} ms, "
            f"bus/raw throughput {bus_result['bus_vs_raw_throughput']:.2f}x"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
