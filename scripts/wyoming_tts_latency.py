"""Streaming synthesis over Wyoming against whole-text synthesis: how soon a language model's
reply starts to be heard while the model is still writing it.

    .venv/bin/python scripts/wyoming_tts_latency.py [--replies 6] [--rounds 3] [--words-per-s 15]

Each reply is five of the WER set's longer phrases (six words or more), written word by
word at `--words-per-s` (a language model's pace). `streaming` sends every word as a
`synthesize-chunk` the moment it is written (Home Assistant with a streaming TTS); `whole`
waits for the last word, then sends one `synthesize`, as a client does with a server that
does not stream. Both run on one bus (Kokoro alone), alternating reply by reply, for
`--rounds` rounds. Printed per mode: the time from the first word to the first audio, and
from the last word to the end of the audio, p50 and range over every reply, and the ratio
of the first-audio p50s.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts"), str(ROOT / "tests")]

from conftest import NO_WARMUP, start_bus, stop_bus  # noqa: E402
from wer_set import PHRASES  # noqa: E402
from wyoming.audio import AudioChunk, AudioStop  # noqa: E402
from wyoming.client import AsyncTcpClient  # noqa: E402
from wyoming.error import Error  # noqa: E402
from wyoming.tts import (  # noqa: E402
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
    SynthesizeVoice,
)

MODES = ("streaming", "whole")
SENTENCES_PER_REPLY = 5


async def one_reply(port: int, text: str, mode: str, words_per_s: float) -> tuple[float, float]:
    """(first word -> first audio, last word -> end of audio), in seconds."""
    words = text.split()
    voice = SynthesizeVoice(name="alloy")
    async with AsyncTcpClient("127.0.0.1", port) as client:
        start = time.perf_counter()
        last_word_at = start + (len(words) - 1) / words_per_s

        async def write() -> None:
            if mode == "streaming":
                await client.write_event(SynthesizeStart(voice=voice).event())
            for i, word in enumerate(words):
                await asyncio.sleep(max(0.0, start + i / words_per_s - time.perf_counter()))
                if mode == "streaming":
                    await client.write_event(SynthesizeChunk(text=word + " ").event())
            if mode == "streaming":
                await client.write_event(SynthesizeStop().event())
            else:
                await client.write_event(Synthesize(text=text, voice=voice).event())

        writer = asyncio.create_task(write())
        first_audio = None
        end = AudioStop().event().type if mode == "whole" else SynthesizeStopped().event().type
        while (event := await asyncio.wait_for(client.read_event(), 300)) is not None:
            if Error.is_type(event.type):
                raise RuntimeError(f"{mode}: {Error.from_event(event).text}")
            if AudioChunk.is_type(event.type) and first_audio is None:
                first_audio = time.perf_counter()
            if event.type == end:
                break
        await writer
        done = time.perf_counter()
    assert first_audio is not None
    return first_audio - start, done - last_word_at


def replies(count: int) -> list[str]:
    sentences = [p for p in PHRASES if len(p.split()) >= 6]  # a reply's, not a command's
    per = SENTENCES_PER_REPLY
    return [" ".join(sentences[(r * per + s) % len(sentences)] for s in range(per)) for r in range(count)]


def summary(values: list[float]) -> str:
    return f"p50 {statistics.median(values):5.2f} s  (min {min(values):.2f}, max {max(values):.2f})"


Timings = dict[str, list[tuple[float, float]]]


async def measure(port: int, texts: list[str], rounds: int, words_per_s: float) -> Timings:
    results: Timings = {mode: [] for mode in MODES}
    for round_index in range(rounds):
        for i, text in enumerate(texts):
            order = MODES if (round_index + i) % 2 == 0 else MODES[::-1]
            for mode in order:
                results[mode].append(await one_reply(port, text, mode, words_per_s))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replies", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--words-per-s", type=float, default=15.0)
    args = parser.parse_args()
    texts = replies(args.replies)
    bus = start_bus(Path(tempfile.mkdtemp(prefix="voicebus-wyoming-")),
                    {**NO_WARMUP, "VOICEBUS__MODELS__STT": "[]"})
    try:
        asyncio.run(one_reply(bus.wyoming_port, texts[0], "whole", 1000.0))  # warm the voice and the path
        results = asyncio.run(measure(bus.wyoming_port, texts, args.rounds, args.words_per_s))
    finally:
        stop_bus(bus)
    words = statistics.mean(len(t.split()) for t in texts)
    print(f"{args.replies} replies of {SENTENCES_PER_REPLY} sentences ({words:.0f} words, "
          f"{words / args.words_per_s:.1f} s to write at {args.words_per_s:g} words/s), "
          f"{args.rounds} rounds, modes alternating")
    for mode in MODES:
        first = [r[0] for r in results[mode]]
        tail = [r[1] for r in results[mode]]
        print(f"  {mode:<9}  first audio after the first word: {summary(first)}")
        print(f"  {'':<9}  end of audio after the last word:  {summary(tail)}")
    first_p50 = {mode: statistics.median(r[0] for r in results[mode]) for mode in MODES}
    ratio = first_p50["whole"] / first_p50["streaming"]
    print(f"  first audio, whole / streaming: {ratio:.1f}x")


if __name__ == "__main__":
    main()
