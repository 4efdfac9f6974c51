"""Short requests beside long ones (--mixed): the bus running long requests as units against
the same bus running every request whole, and against the Ray Serve peer.

Four classes run at once, each a closed loop of its own clients:
  stt_short  voice commands of 1-4 s, 8 clients
  stt_long   recordings of 2-5 minutes, 2 clients
  tts_short  one-sentence replies, 4 clients
  tts_long   texts of several paragraphs, 1 client
Every client sends for `MixPlan.mixed_s` seconds (a long client starts no request it would
not finish by then at the pace of its last one, but always sends one), and the requests in
flight then are answered and counted: long work is there for the whole run, as a backlog of
recordings and articles would be. Throughput is audio-seconds per second: STT's input,
TTS's output, over the time from the run's start to the class's last answer.

Systems, each round in a rotated order, so that drifting machine load hits them alike:
  units  the bus as configured (`unit_scheduling: true`): long requests run as units
  whole  the same bus after `configure` `unit_scheduling: false`: every request runs whole
  peer   Ray Serve `@serve.batch` over the same engines (bench/peer.py), when installed
Each round also measures the references on the bus (units): each short class alone; the
two short classes together (the mix without its long requests); and the long recordings
alone, run as units and whole (long-audio throughput), whose texts must be equal.

Every request of a class uses the same items in every system and round. The goals (issue
"Short requests stay fast beside long ones"): short-class p95 in the mix <= 2x its p95 alone
and <= 0.5x the peer's; long-audio throughput run as units >= 0.95x run whole. Each ratio is
taken per round and reported as its median and spread. The bus's request timeout is raised
for the stage (a long text read at the back of a busy queue must not time out).
"""

from __future__ import annotations

import os
import random
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.bus import Bus, BusConnection, wire_fields
from bench.load import Connection, Outcome, Sample, Tick, closed_loop_samples, summarize
from bench.workload import STT_RATE, TTS_TEXTS, Task, Workload
from model_manager.config import ModelSpec

#: Long enough that no request of the stage times out on a busy 2-core machine.
TIMEOUT_S = 900.0
SHORT_STT_S = (1.0, 4.0)
#: Two recordings, one per long client: 2-5 minutes, kept near the short end so that a run
#: fits the stage's 15 minutes on 2 cores (5 and 6 windows of 30 s).
LONG_RECORDING_S = (125.0, 170.0)
TTS_SENTENCES = [s.strip() + "." for text in TTS_TEXTS for s in text.split(".") if s.strip()]
LONG_TEXT = (
    "The old lighthouse stood at the end of the harbour wall for more than a century. Every evening "
    "the keeper climbed its narrow stairs to light the lamp.\n\n"
    "When the storms came in the autumn, the fishing boats followed its beam home through the rain.\n\n"
    "Today the light runs by itself, and the keeper's cottage is a small museum. Visitors climb the "
    "same stairs and look out over the grey water."
)


@dataclass(frozen=True)
class MixClass:
    name: str
    task: Task
    clients: int
    long: bool


CLASSES = (
    MixClass("stt_short", "stt", 8, long=False),
    MixClass("stt_long", "stt", 2, long=True),
    MixClass("tts_short", "tts", 4, long=False),
    MixClass("tts_long", "tts", 1, long=True),
)
BY_NAME = {c.name: c for c in CLASSES}
SHORT = ("stt_short", "tts_short")


@dataclass(frozen=True)
class MixPlan:
    rounds: int = 3
    #: Seconds each mixed run sends requests for.
    mixed_s: float = 40.0
    #: Requests of each short class alone, per round (a few batches' worth).
    alone_requests: tuple[tuple[str, int], ...] = (("stt_short", 24), ("tts_short", 8))
    #: Seconds the two short classes run together, per round.
    shorts_together_s: float = 10.0
    recording_s: tuple[float, ...] = LONG_RECORDING_S
    long_text: str = LONG_TEXT


def quick_plan() -> MixPlan:
    """A smoke run: one round, shorter recordings."""
    return MixPlan(rounds=1, mixed_s=20.0, alone_requests=(("stt_short", 8), ("tts_short", 4)),
                   shorts_together_s=5.0, recording_s=(65.0, 95.0))


# --- the items ----------------------------------------------------------------------------


def make_items(plan: MixPlan, seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """Every class's items: STT clips spoken by espeak-ng in several voices (scripts/wer_set.py's
    phrases), TTS sentences and the long text. Each item has an "id"."""
    from wer_set import ESPEAK_VOICES, PHRASES, espeak

    rng = random.Random(seed)
    short: list[dict[str, Any]] = []
    for attempt in range(400):
        if len(short) == 24:
            break
        audio = espeak(rng.choice(PHRASES), ESPEAK_VOICES[attempt % 4], rng.choice([140, 170]))
        if SHORT_STT_S[0] <= len(audio) / STT_RATE <= SHORT_STT_S[1]:
            short.append({"audio": audio, "id": f"command{len(short)}"})
    pause = np.zeros(int(0.6 * STT_RATE), np.float32)
    recordings = []
    for index, seconds in enumerate(plan.recording_s):
        parts: list[np.ndarray] = []
        while sum(len(p) for p in parts) < seconds * STT_RATE:
            parts += [espeak(rng.choice(PHRASES[20:]), ESPEAK_VOICES[len(parts) % 4], 160), pause]
        audio = np.concatenate(parts)[: int(seconds * STT_RATE)]
        recordings.append({"audio": audio, "id": f"recording{index}"})
    return {
        "stt_short": short,
        "stt_long": recordings,
        "tts_short": [{"text": s, "id": f"reply{i}"} for i, s in enumerate(TTS_SENTENCES)],
        "tts_long": [{"text": plan.long_text, "id": "article"}],
    }


def audio_seconds(items: Sequence[dict[str, Any]]) -> list[float]:
    return [round(len(i["audio"]) / STT_RATE, 1) for i in items if "audio" in i]


# --- the systems ----------------------------------------------------------------------------

Connect = Callable[[Task], Connection]


class TextConnection(BusConnection):
    """A bus client that keeps the text of every STT reply, by item id."""

    def __init__(self, address: str, task: Task, texts: dict[str, str], lock: threading.Lock) -> None:
        super().__init__(address, Workload(task, ()), "single", timeout_s=TIMEOUT_S)
        self.texts = texts
        self.lock = lock

    def call(self, item: dict[str, Any]) -> Outcome:
        if self.workload.task != "stt":
            return super().call(item)
        reply = self.request({"action": "transcribe", **wire_fields("stt", item)})
        outcome = Outcome(end=time.perf_counter(), audio_s=len(item["audio"]) / STT_RATE,
                          error=None if reply.get("status") == "success" else
                          str((reply.get("error") or {}).get("code", "bad_reply")))
        if outcome.ok:
            with self.lock:
                self.texts[item["id"]] = reply.get("text", "")
        return outcome


class BusSystem:
    """The bus with unit scheduling on ("units") or off ("whole"), switched by `configure`."""

    def __init__(self, bus: Bus, units: bool) -> None:
        self.bus = bus
        self.units = units
        self.name = "units" if units else "whole"
        self.texts: dict[str, str] = {}
        self._lock = threading.Lock()

    def before(self) -> None:
        for task in ("stt", "tts"):
            self.bus.configure(task, unit_scheduling=self.units)

    def connect(self, task: Task) -> Connection:
        return TextConnection(self.bus.address(task), task, self.texts, self._lock)


class PeerSystem:
    name = "peer"

    def __init__(self, peer: Any) -> None:
        self.peer = peer

    def before(self) -> None:
        pass

    def connect(self, task: Task) -> Connection:
        return self.peer.connection(Workload(task, ()), "single")


def start_bus(specs: dict[Task, ModelSpec]) -> Bus:
    """The benchmark's bus (bench/bus.py), with the request timeout raised for this stage."""
    key = "VOICEBUS__LIMITS__REQUEST_TIMEOUT_MS"
    saved = os.environ.get(key)
    os.environ[key] = str(int(TIMEOUT_S * 1000))
    try:
        return Bus(specs, warmup=True)
    finally:
        if saved is None:
            del os.environ[key]
        else:
            os.environ[key] = saved


# --- the runs -------------------------------------------------------------------------------


def mixed_run(connect: Connect, items: dict[str, list[dict[str, Any]]], classes: Sequence[MixClass],
              seconds: float, tick: Tick) -> dict[str, Any]:
    """`classes` at once for `seconds`, each client in a closed loop on its class's items (a
    long client starts no request it would not finish in time at its last one's pace, but
    always one). Per class: `summarize`'s row over the time from the start to its last answer."""
    lock = threading.Lock()
    samples: dict[str, list[Sample]] = {c.name: [] for c in classes}
    crashed: list[BaseException] = []
    started = time.perf_counter()
    until = started + seconds

    def client(cls: MixClass, index: int) -> None:
        connection = connect(cls.task)
        pool = items[cls.name]
        try:
            sent, last_s = 0, 0.0
            while (now := time.perf_counter()) < until and not (cls.long and sent and now + last_s > until):
                item = pool[(index + sent * cls.clients) % len(pool)]
                outcome = connection.call(item)
                last_s = outcome.end - now
                with lock:
                    samples[cls.name].append(Sample(now, outcome))
                sent += 1
                tick(1)
        except BaseException as exc:  # a bug in a connection: re-raised below, never lost
            crashed.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(c, i), daemon=True)
               for c in classes for i in range(c.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if crashed:
        raise crashed[0]
    rows = {}
    for cls in classes:
        got = samples[cls.name]
        wall = max((s.outcome.end for s in got), default=started) - started
        rows[cls.name] = _row(summarize(got, wall))
    return rows


def alone_run(connect: Connect, items: dict[str, list[dict[str, Any]]], name: str, requests: int,
              tick: Tick) -> dict[str, Any]:
    cls = BY_NAME[name]
    workload = Workload(cls.task, tuple(items[name]))
    got, wall = closed_loop_samples(lambda: connect(cls.task), workload, cls.clients, requests, tick)
    return _row(summarize(got, wall))


def _row(row: dict[str, Any]) -> dict[str, Any]:
    keep = ("requests", "succeeded", "errors", "wall_s", "audio_s_per_s", "p50_ms", "p95_ms", "p99_ms")
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items() if k in keep}


def one_round(index: int, systems: Sequence[Any], units: BusSystem, whole: BusSystem,
              items: dict[str, list[dict[str, Any]]], plan: MixPlan, tick: Tick) -> dict[str, Any]:
    """The mix on every system (rotated order), then the references on the bus."""
    order = [systems[(index + k) % len(systems)] for k in range(len(systems))]
    result: dict[str, Any] = {"order": [s.name for s in order], "load_average": round(os.getloadavg()[0], 2),
                              "mixed": {}, "alone": {}}
    for system in order:
        system.before()
        result["mixed"][system.name] = mixed_run(system.connect, items, CLASSES, plan.mixed_s, tick)
        print(f"round {index + 1}: {system.name} mixed {_brief(result['mixed'][system.name])}", flush=True)
    units.before()
    for name, requests in plan.alone_requests:
        result["alone"][name] = alone_run(units.connect, items, name, requests, tick)
    shorts = [BY_NAME[name] for name in SHORT]
    result["shorts_together"] = mixed_run(units.connect, items, shorts, plan.shorts_together_s, tick)
    recordings = len(items["stt_long"])
    long_alone = {}
    for system in ((units, whole) if index % 2 == 0 else (whole, units)):
        system.before()
        long_alone[system.name] = alone_run(system.connect, items, "stt_long", recordings, tick)
    result["stt_long_alone"] = long_alone
    result["long_texts_equal"] = all(units.texts.get(i["id"]) == whole.texts.get(i["id"]) is not None
                                     for i in items["stt_long"])
    units.before()
    print(f"round {index + 1}: alone {_brief(result['alone'])}; long recordings alone "
          f"{ {k: v['audio_s_per_s'] for k, v in long_alone.items()} } audio-s/s", flush=True)
    return result


def _brief(rows: dict[str, Any]) -> str:
    return ", ".join(f"{name} p95 {row['p95_ms'] or 0:.0f} ms" for name, row in rows.items())


# --- the stage ------------------------------------------------------------------------------


def mixed_stage(specs: dict[Task, ModelSpec], plan: MixPlan, peer_factory: Callable[[], Any] | None,
                peer_skipped: str | None, tick: Tick, seed: int = 0) -> dict[str, Any]:
    """The whole stage; see the module docstring. `peer_factory` starts the peer (None: no peer,
    `peer_skipped` says why)."""
    items = make_items(plan, seed)
    report: dict[str, Any] = {
        "plan": {"rounds": plan.rounds, "mixed_s": plan.mixed_s,
                 "alone_requests": dict(plan.alone_requests), "shorts_together_s": plan.shorts_together_s,
                 "classes": {c.name: {"task": c.task, "clients": c.clients} for c in CLASSES},
                 "stt_short_seconds": [min(audio_seconds(items["stt_short"])),
                                       max(audio_seconds(items["stt_short"]))],
                 "stt_long_seconds": audio_seconds(items["stt_long"]),
                 "tts_long_chars": len(plan.long_text)},
        "load_average_start": round(os.getloadavg()[0], 2),
    }
    bus = start_bus(specs)
    peer = None
    try:
        units, whole = BusSystem(bus, True), BusSystem(bus, False)
        systems: list[Any] = [units, whole]
        if peer_factory is not None:
            try:
                peer = peer_factory()
                systems.append(PeerSystem(peer))
            except Exception as exc:  # the peer is optional: keep the bus's results
                peer_skipped = f"Ray Serve failed to start: {type(exc).__name__}: {exc}"
        report["peer"] = {"skipped": peer_skipped} if peer is None else {"settings": peer.settings}
        prime(systems, items, tick)
        report["rounds"] = [one_round(r, systems, units, whole, items, plan, tick)
                            for r in range(plan.rounds)]
        report["batch_sizes"] = {task: bus.histogram(task) for task in ("stt", "tts")}
    finally:
        if peer is not None:
            peer.stop()
        bus.stop()
    report["load_average_end"] = round(os.getloadavg()[0], 2)
    report["summary"] = summarize_rounds(report["rounds"])
    report["goals"] = goals(report["rounds"])
    return report


def prime(systems: Sequence[Any], items: dict[str, list[dict[str, Any]]], tick: Tick) -> None:
    """Untimed: each process's first calls of each kind of request, and the bus's exploring of
    batch sizes for 30 s windows (sizes 1, 2, 4, 8, twice each: the recordings twice, as
    units), so that neither is part of any round. The bus's two systems share one process."""
    for system in systems:
        if system.name == "whole":
            continue
        system.before()
        for name in ("stt_short", "tts_short", "stt_long"):
            cls = BY_NAME[name]
            repeats = 2 if name == "stt_long" and system.name == "units" else 1
            alone_run(system.connect, items, name, cls.clients * repeats, tick)
    systems[0].before()


# --- the arithmetic (pure) --------------------------------------------------------------------


def spread(values: Sequence[float | None]) -> dict[str, float | None]:
    """Median, min and max of the measured values (None when none was measured)."""
    known = [v for v in values if v is not None]
    if not known:
        return {"median": None, "min": None, "max": None}
    return {"median": round(statistics.median(known), 3), "min": round(min(known), 3),
            "max": round(max(known), 3)}


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def summarize_rounds(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per system and class: p50/p95/p99 and throughput, each as median and spread over rounds."""
    out: dict[str, Any] = {}
    for system in rounds[0]["mixed"]:
        out[system] = {}
        for cls in CLASSES:
            rows = [r["mixed"][system][cls.name] for r in rounds]
            out[system][cls.name] = {key: spread([row[key] for row in rows])
                                     for key in ("p50_ms", "p95_ms", "p99_ms", "audio_s_per_s")}
            out[system][cls.name]["errors"] = sum(sum(row["errors"].values()) for row in rows)
    return out


def goals(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The issue's goals, each ratio taken per round: its median and spread, and whether the
    median meets the goal."""
    result: dict[str, Any] = {}
    for name in SHORT:
        for system in rounds[0]["mixed"]:
            per_round = [_ratio(r["mixed"][system][name]["p95_ms"], r["alone"][name]["p95_ms"])
                         for r in rounds]
            result[f"{name}_p95_{system}_mixed_over_alone"] = spread(per_round)
            together = [_ratio(r["mixed"][system][name]["p95_ms"], r["shorts_together"][name]["p95_ms"])
                        for r in rounds]
            result[f"{name}_p95_{system}_mixed_over_shorts_together"] = spread(together)
        if "peer" in rounds[0]["mixed"]:
            result[f"{name}_p95_units_over_peer"] = spread(
                [_ratio(r["mixed"]["units"][name]["p95_ms"], r["mixed"]["peer"][name]["p95_ms"])
                 for r in rounds])
    result["stt_long_throughput_units_over_whole_alone"] = spread(
        [_ratio(r["stt_long_alone"]["units"]["audio_s_per_s"], r["stt_long_alone"]["whole"]["audio_s_per_s"])
         for r in rounds])
    for name in ("stt_long", "tts_long"):
        result[f"{name}_throughput_units_over_whole_mixed"] = spread(
            [_ratio(r["mixed"]["units"][name]["audio_s_per_s"], r["mixed"]["whole"][name]["audio_s_per_s"])
             for r in rounds])
    met = {
        "stt_short_p95_within_2x_alone": _at_most(result["stt_short_p95_units_mixed_over_alone"], 2.0),
        "tts_short_p95_within_2x_alone": _at_most(result["tts_short_p95_units_mixed_over_alone"], 2.0),
        "stt_long_throughput_at_least_0.95x": _at_least(result["stt_long_throughput_units_over_whole_alone"],
                                                        0.95),
    }
    if "peer" in rounds[0]["mixed"]:
        met["stt_short_p95_within_0.5x_peer"] = _at_most(result["stt_short_p95_units_over_peer"], 0.5)
        met["tts_short_p95_within_0.5x_peer"] = _at_most(result["tts_short_p95_units_over_peer"], 0.5)
    result["met"] = met
    result["long_texts_equal_every_round"] = all(r["long_texts_equal"] for r in rounds)
    return result


def _at_most(ratio: dict[str, float | None], bound: float) -> bool | None:
    return None if ratio["median"] is None else ratio["median"] <= bound


def _at_least(ratio: dict[str, float | None], bound: float) -> bool | None:
    return None if ratio["median"] is None else ratio["median"] >= bound


def mixed_table(report: dict[str, Any]) -> str:
    plan = report["plan"]
    classes = ", ".join(f"{n} x{c['clients']}" for n, c in plan["classes"].items())
    lines = [f"Mixed workload: {classes}; "
             f"{plan['rounds']} interleaved rounds; recordings {plan['stt_long_seconds']} s, commands "
             f"{plan['stt_short_seconds'][0]}-{plan['stt_short_seconds'][1]} s, long text "
             f"{plan['tts_long_chars']} characters",
             f"load average {report['load_average_start']} at start, {report['load_average_end']} at end, "
             f"by round {[r['load_average'] for r in report['rounds']]}; peer: "
             f"{report['peer'].get('skipped') or report['peer'].get('settings')}",
             "system | class     | p50 ms (min-max)       | p95 ms (min-max)        | p99 ms  | "
             "audio-s/s (min-max)"]
    for system, classes in report["summary"].items():
        for name, row in classes.items():
            p50, p95, p99, tput = row["p50_ms"], row["p95_ms"], row["p99_ms"], row["audio_s_per_s"]
            lines.append(f"{system:6} | {name:9} | {_span(p50, 0):22} | {_span(p95, 0):23} | "
                         f"{p99['median'] or 0:7.0f} | {_span(tput, 2)}"
                         + (f"  errors {row['errors']}" if row["errors"] else ""))
    first = report["rounds"][0]
    for name in SHORT:
        alone = [r["alone"][name]["p95_ms"] for r in report["rounds"]]
        together = [r["shorts_together"][name]["p95_ms"] for r in report["rounds"]]
        lines.append(f"{name} alone p95 ms by round: {_list(alone)}; with the other short class: "
                     f"{_list(together)}")
    long_alone = {s: [r["stt_long_alone"][s]["audio_s_per_s"] for r in report["rounds"]]
                  for s in first["stt_long_alone"]}
    lines.append(f"stt_long alone audio-s/s by round: {long_alone}")
    lines.append("goals (per-round ratios, median and spread):")
    for key, value in report["goals"].items():
        if isinstance(value, dict) and "median" in value:
            lines.append(f"  {key}: {value['median']} ({value['min']}-{value['max']})")
    lines.append(f"  met: {report['goals']['met']}; long texts equal (units, whole) every round: "
                 f"{report['goals']['long_texts_equal_every_round']}")
    return "\n".join(lines)


def _span(value: dict[str, float | None], digits: int) -> str:
    if value["median"] is None:
        return "-"
    return f"{value['median']:.{digits}f} ({value['min']:.{digits}f}-{value['max']:.{digits}f})"


def _list(values: Sequence[float | None]) -> str:
    return ", ".join("-" if v is None else f"{v:.0f}" for v in values)
