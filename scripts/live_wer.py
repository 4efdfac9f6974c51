"""The live pipeline's accuracy, without the clock: finals' WER under several stream settings.

    .venv/bin/python scripts/live_wer.py [--clips 24] [--utterances 3] [--held-out SEED]
        [--configs default,context_s=0,context_s=0:decode_pad_s=0.2]

Each clip (the live benchmark's: the WER set's phrases in its espeak-ng voices, with 1 s
pauses; with --held-out, 96 phrases of numbers, times and names drawn with that seed, which
no setting was tuned on) goes through what a live stream does: Silero VAD frame by frame, the endpointer, a
`LiveSession` with the given settings, and the agent's CTranslate2 engine as configured in
config/llm_config.yaml. Every decode is answered at once, in order (no skipped partials, no
clock), so the result is deterministic and shows the pipeline's accuracy alone; the real-
time benchmark (`scripts/test_batch_processing.py --task live`) shows it under load. The
same clips are also transcribed whole, as one `transcribe` would. WER: jiwer after
Whisper's English normaliser (scripts/wer_set.py).

A config is `default` or `key=value` pairs of `LiveConfig` fields joined by ":".
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from bench.live_clips import LiveClip, make_live_clips  # noqa: E402
from wer_set import templated, wer  # noqa: E402

from agents.live.session import FINAL, LiveConfig, LiveSession, Step  # noqa: E402
from agents.live.vad import SAMPLE_RATE, StreamingVad  # noqa: E402
from model_manager.config import load_config  # noqa: E402
from model_manager.engines.registry import build_engine  # noqa: E402

CHUNK = SAMPLE_RATE // 10  # 100 ms, as the benchmark's microphones send


def parse_config(text: str) -> LiveConfig:
    if text == "default":
        return LiveConfig()
    names = {f.name for f in fields(LiveConfig)} - {"endpoint"}
    values: dict[str, float] = {}
    for pair in text.split(":"):
        key, _, value = pair.partition("=")
        if key not in names:
            raise SystemExit(f"unknown setting {key!r}; known: {', '.join(sorted(names))}")
        values[key] = float(value)
    return replace(LiveConfig(), **values)


def finals_of(clip: LiveClip, config: LiveConfig, transcribe: Callable[[np.ndarray], str]) -> str:
    """The clip's finals, streamed through a session whose decodes are answered at once."""
    session, vad = LiveSession(config), StreamingVad()
    finals: list[str] = []
    now = 0.0

    def apply(step: Step) -> None:
        for decode in step.decodes:
            apply(session.decoded(decode.decode_id, transcribe(decode.audio), now))
        finals.extend(e.text for e in step.events if e.type == FINAL)

    for start in range(0, len(clip.audio), CHUNK):
        chunk = clip.audio[start:start + CHUNK]
        now = (start + len(chunk)) / SAMPLE_RATE
        apply(session.push(chunk, vad.push(chunk), now))
        while (partial := session.start_partial()) is not None:
            apply(session.decoded(partial.decode_id, transcribe(partial.audio), now))
    apply(session.close(now, vad.flush()))
    return " ".join(finals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--utterances", type=int, default=3, help="utterances per clip")
    parser.add_argument("--configs", default="default,context_s=0,context_s=0:decode_pad_s=0.2")
    parser.add_argument("--held-out", type=int, metavar="SEED",
                        help="phrases drawn with this seed instead of the WER set's")
    args = parser.parse_args()
    phrases = None if args.held_out is None else templated(random.Random(args.held_out), 96)
    configs = {text: parse_config(text) for text in args.configs.split(",")}
    engine = build_engine(load_config(ROOT / "config" / "llm_config.yaml").models("stt")[0])

    def transcribe(audio: np.ndarray) -> str:
        return engine.run_batch([engine.prepare({"audio": audio, "language": "en"})])[0].text

    clips = make_live_clips(args.clips, args.utterances, phrases)
    references = [clip.text for clip in clips]
    print(f"{len(clips)} clips of {args.utterances} utterances, {engine.name}; WER %")
    print(f"  {'whole clips (transcribe)':<48} {wer(references, [transcribe(c.audio) for c in clips]):5.1f}")
    for text, config in configs.items():
        finals = [finals_of(clip, config, transcribe) for clip in clips]
        print(f"  {'live finals, ' + text:<48} {wer(references, finals):5.1f}", flush=True)


if __name__ == "__main__":
    main()
