"""How much batching speeds up the decodes that live streams make, on this machine's engine:
the most that cross-stream batching can add to the streams one model carries.

    .venv/bin/python scripts/live_batch_gain.py [--decodes 32] [--rounds 3] [--sizes 1,2,4,8]

The decodes are the live pipeline's own (`scripts/live_wer.py`'s replay of the benchmark's
clips: partials and finals, with the earlier utterances they hear), kept to those of one
window length, as the batcher groups them. Each round runs them all through the engine
configured in config/llm_config.yaml in batches of each size, the sizes in a new order
every round. Printed per size: milliseconds per decode (median and range over the rounds)
and the speed-up against one by one. When the largest speed-up is under 2, no scheduler
can make batching carry twice the streams of one-by-one decoding on this machine.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from bench.live_clips import make_live_clips  # noqa: E402
from live_wer import finals_of  # noqa: E402

from agents.live.session import LiveConfig  # noqa: E402
from model_manager.config import load_config  # noqa: E402
from model_manager.engines.base import Engine  # noqa: E402
from model_manager.engines.registry import build_engine  # noqa: E402


def live_decodes(engine: Engine, clips: int) -> list[np.ndarray]:
    """The audio of every decode a live stream makes of `clips` benchmark clips."""
    audios: list[np.ndarray] = []

    def transcribe(audio: np.ndarray) -> str:
        audios.append(audio)
        return engine.run_batch([engine.prepare({"audio": audio, "language": "en"})])[0].text

    for clip in make_live_clips(clips, 6):
        finals_of(clip, LiveConfig(), transcribe)
    return audios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decodes", type=int, default=32, help="decodes per batch size and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="1,2,4,8")
    parser.add_argument("--clips", type=int, default=4, help="benchmark clips whose decodes are used")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    engine = build_engine(load_config(ROOT / "config" / "llm_config.yaml").models("stt")[0])

    requests = [engine.prepare({"audio": a, "language": "en"}) for a in live_decodes(engine, args.clips)]
    window_s, _ = Counter(r.window_s for r in requests).most_common(1)[0]
    same = [r for r in requests if r.window_s == window_s]
    chosen = [same[i % len(same)] for i in range(args.decodes)]
    print(f"{len(requests)} live decodes ({len(same)} of the most common window, {window_s:g} s); "
          f"{args.decodes} per batch size and round, {args.rounds} rounds, {engine.name}")

    per_decode_ms: dict[int, list[float]] = {size: [] for size in sizes}
    rng = random.Random(0)
    for _ in range(args.rounds):
        for size in rng.sample(sizes, len(sizes)):
            started = time.perf_counter()
            for i in range(0, len(chosen), size):
                engine.run_batch(chosen[i:i + size])
            per_decode_ms[size].append((time.perf_counter() - started) / len(chosen) * 1000)

    alone = statistics.median(per_decode_ms[sizes[0]])
    for size in sizes:
        ms = per_decode_ms[size]
        print(f"  batch {size:>2}: {statistics.median(ms):6.1f} ms per decode "
              f"(min {min(ms):.1f}, max {max(ms):.1f})  speed-up {alone / statistics.median(ms):.2f}x")


if __name__ == "__main__":
    main()
