"""What a clip sent as a JSON list costs the STT agent's intake, measured without sockets.

    .venv/bin/python scripts/intake_cost.py [--reps 200] [--rounds 5] [--seconds 4 30]
    .venv/bin/python scripts/intake_cost.py --fields-only [--rounds 5]

Seed clients send STT audio as a JSON list of floats. The agent's intake
(agents/intake.py `prepare_frame`, inline or in its worker process) decodes the frame
(`protocol.decode_request`), checks the request's options and turns the item into an engine
request: the audio decoded, checked for NaN and range, and resampled (not at all here: the
clip is 16 kHz). This times that whole path for a `transcribe` frame per clip length, with
the standard library's parser ("before": `json.loads` in place of `client_json.loads`) and
with orjson ("after": what the agent runs), their rounds taking turns so that both share
whatever else the machine does. Each round is `--reps` frames for a 4 s clip (longer clips get
proportionally fewer, so that a round reads about the same audio); it prints min / median /
max ms per frame for each round, the median of the rounds' medians and the fastest frame with
their ratios before/after, then the same for `decode_request` alone.

Then the field validation alone, the part of the intake that does not grow with the audio:
the shared options (`check_options`) and the item's fields (`parse_item`) of a 4 s
`transcribe` and of a `synthesize`, both with the fields a client commonly sets, already
decoded, with the audio decoding stubbed out (it is timed above, and would drown the rest).
It prints min / p50 / p90 microseconds per request for each round and the median of the
rounds' p50s, against the goal of 0.2 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents.intake import prepare_frame  # noqa: E402
from agents.options import check_options  # noqa: E402
from agents.services import STT, TTS, Service  # noqa: E402
from model_manager import client_json, protocol  # noqa: E402
from model_manager.config import Limits  # noqa: E402

PARSERS = ("stdlib", "orjson")


@contextmanager
def using(name: str) -> Iterator[None]:
    """The agent's intake as it runs, or ("stdlib") as it ran before orjson."""
    protocol.client_json = json if name == "stdlib" else client_json  # type: ignore[assignment]
    try:
        yield
    finally:
        protocol.client_json = client_json


def clip_frame(seconds: float) -> bytes:
    """A transcribe request as a seed client sends it: float32 samples as a JSON list."""
    rng = np.random.default_rng(16_000)
    audio = (rng.standard_normal(int(16_000 * seconds)) * 0.1).astype(np.float32)
    return json.dumps({"action": "transcribe", "audio_data": audio.tolist(), "request_id": "clip-1"}).encode()


def one_round(run: Callable[[], object], reps: int) -> list[float]:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def compare(title: str, run: Callable[[], object], reps: int, rounds: int) -> None:
    medians: dict[str, list[float]] = {name: [] for name in PARSERS}
    bests: dict[str, list[float]] = {name: [] for name in PARSERS}
    print(f"  {title} (ms per frame, min / median / max)")
    print(f"    {'round':<6}" + "".join(f"{name:<28}" for name in PARSERS))
    for index in range(rounds):
        cells = []
        for name in PARSERS:
            with using(name):
                times = one_round(run, reps)
            medians[name].append(statistics.median(times))
            bests[name].append(min(times))
            cells.append(f"{min(times):7.2f} / {statistics.median(times):7.2f} / {max(times):7.2f}")
        print(f"    {index + 1:<6}" + "".join(f"{cell:<28}" for cell in cells))
    before, after = (statistics.median(medians[name]) for name in PARSERS)
    print(f"    median of the round medians: stdlib {before:.2f} ms, orjson {after:.2f} ms; "
          f"before/after {before / after:.2f}x")
    # On a busy machine the fastest frame says more of the work itself than the median.
    before, after = (min(bests[name]) for name in PARSERS)
    print(f"    fastest frame: stdlib {before:.2f} ms, orjson {after:.2f} ms; "
          f"before/after {before / after:.2f}x")


#: The field validation's goal, per request.
FIELDS_GOAL_US = 200.0


def field_requests() -> dict[str, tuple[Service, dict[str, Any]]]:
    """A 4 s transcribe and a synthesize as clients send them, decoded as the agent decodes them."""
    audio = json.loads(clip_frame(4.0))["audio_data"]
    stt = {"action": "transcribe", "audio_data": audio, "request_id": "clip-1", "language": "en",
           "beam_size": 1, "vad": True, "priority": "interactive", "timeout_ms": 30_000}
    tts = {"action": "synthesize", "text": "The quick brown fox jumps over the lazy dog.",
           "voice": "jf_alpha", "speed": 1.0, "format": "wav", "request_id": "say-1",
           "priority": "interactive"}
    return {
        "transcribe (4 s clip)": (STT, protocol.decode_request(json.dumps(stt).encode())[0]),
        "synthesize": (TTS, protocol.decode_request(json.dumps(tts).encode())[0]),
    }


def fields_cost(rounds: int, reps: int = 20_000) -> None:
    limits = Limits()
    decoded = np.zeros(64_000, np.float32)
    print(f"field validation: check_options + parse_item, audio decoding stubbed out "
          f"(us per request, {reps} requests x {rounds} rounds; goal {FIELDS_GOAL_US:g} us)")
    # The audio as `decode_audio` would give it: what is left is the checks of the fields.
    with mock.patch("agents.services.decode_audio", lambda fields, max_seconds: decoded):
        for title, (service, message) in field_requests().items():
            def run(service: Service = service, message: dict[str, Any] = message) -> object:
                check_options(message)
                return service.parse_item(message, limits)

            run()  # warm: first-use imports and caches
            p50s = []
            print(f"  {title}: round  min / p50 / p90")
            for index in range(rounds):
                times = sorted(t * 1e3 for t in one_round(run, reps))
                p50, p90 = times[len(times) // 2], times[len(times) * 9 // 10]
                p50s.append(p50)
                print(f"    {index + 1:<6} {times[0]:6.1f} / {p50:6.1f} / {p90:6.1f}")
            print(f"    median of the round p50s: {statistics.median(p50s):.1f} us "
                  f"(rounds {min(p50s):.1f} to {max(p50s):.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=200, help="frames per round for a 4 s clip")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, nargs="+", default=[4.0, 30.0], help="clip lengths")
    parser.add_argument("--fields-only", action="store_true", help="time the field validation alone")
    args = parser.parse_args()
    if args.fields_only:
        fields_cost(args.rounds)
        return
    limits = Limits()
    for seconds in args.seconds:
        frame = clip_frame(seconds)
        reps = max(5, round(args.reps * 4 / seconds))
        for name in PARSERS:  # both paths give the same prepared request
            with using(name):
                prepared = prepare_frame(STT, limits, frame)
            assert prepared.error is None and prepared.items[0].request is not None, prepared.error
        print(f"{seconds:g} s clip: {len(frame):,} bytes of JSON, {reps} frames x {args.rounds} rounds")
        compare("the intake: prepare_frame", partial(prepare_frame, STT, limits, frame), reps, args.rounds)
        compare("decode_request alone", partial(protocol.decode_request, frame), reps, args.rounds)
    fields_cost(args.rounds)


if __name__ == "__main__":
    main()
