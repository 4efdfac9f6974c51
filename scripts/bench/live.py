"""Live STT streams at real-time pace: N microphones talking to the bus at once.

Each stream replays a clip (six utterances of the WER set's phrases, spoken by one of its
espeak-ng voices, with 1 s pauses between them) as a microphone would send it: 100 ms
chunks, each sent as soon as it has been "recorded" (chunk k at k+1 chunk lengths after
the stream's start), on one socket, while a second
socket waits on `next_event`, so each event is timed when it becomes ready, not when the
next chunk happens to go out. Streams start staggered over one chunk length, as
independent microphones would.

Latencies are the client's, from the moment the audio existed:
- final latency: the final's arrival minus the moment the utterance's speech ended in the
  clip (it includes the end-of-speech silence the bus waits for, 500 ms by default);
- partial latency: a partial's arrival minus the moment the newest audio it covers ended.

`summarize_live` (pure, tested) turns the outcomes into one row: those percentiles, the
finals' WER against the clips' texts (jiwer after Whisper's English normaliser, as
scripts/wer_set.py counts it), and the streams' errors.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import msgpack
import zmq

from bench.live_clips import CHUNK_S, CLIENT_TIMEOUT_S, LiveClip, StreamOutcome, make_live_clips
from bench.live_realtime import replay_realtime
from bench.stats import percentile
from bench.workload import ROOT, STT_RATE


class _Socket:
    """One REQ socket speaking msgpack; a lost reply raises (the stream is then failed)."""

    def __init__(self, address: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.REQ)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(address)

    def call(self, message: dict[str, Any], timeout_s: float = CLIENT_TIMEOUT_S) -> dict[str, Any]:
        self.sock.send(msgpack.packb(message, use_bin_type=True))
        if not self.sock.poll(int(timeout_s * 1000)):
            raise TimeoutError(f"no reply to {message['action']} within {timeout_s:g} s")
        return msgpack.unpackb(self.sock.recv(), raw=False)

    def close(self) -> None:
        self.sock.close()


def _code(reply: dict[str, Any]) -> str | None:
    return None if reply.get("status") == "success" else str((reply.get("error") or {}).get("code"))


def replay(address: str, clip: LiveClip, start_at: float, chunk_s: float = CHUNK_S,
           options: dict[str, Any] | None = None) -> StreamOutcome:
    """Stream `clip` to the bus in real time from `start_at` (time.perf_counter)."""
    outcome = StreamOutcome(clip)
    sender, reader = _Socket(address), _Socket(address)
    lock = threading.Lock()

    def record(reply: dict[str, Any]) -> None:
        now = time.perf_counter() - start_at
        with lock:
            outcome.events += [(now, event) for event in reply.get("events", [])]
            if _code(reply) and outcome.error is None:
                outcome.error = _code(reply)

    try:
        opened = sender.call({"action": "stream_open", "sample_rate": STT_RATE, "language": "en",
                              "dtype": "float32", **(options or {})})
        if _code(opened):
            outcome.error = _code(opened)
            return outcome
        stream_id = opened["request_id"]

        def read() -> None:
            while True:
                reply = reader.call({"action": "next_event", "request_id": stream_id, "timeout_ms": 1000})
                if _code(reply):  # the stream has gone: closed, and its close answered
                    return
                record(reply)
                if reply.get("done"):
                    return

        reading = threading.Thread(target=read, daemon=True)
        reading.start()
        step = int(chunk_s * STT_RATE)
        for k, start in enumerate(range(0, len(clip.audio), step)):
            delay = start_at + (k + 1) * chunk_s - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            chunk = clip.audio[start : start + step].astype("<f4").tobytes()
            record(sender.call({"action": "stream_audio", "request_id": stream_id, "audio_data": chunk,
                                "dtype": "float32"}))
        record(sender.call({"action": "stream_close", "request_id": stream_id}))
        reading.join(timeout=5.0)
    except TimeoutError as exc:
        outcome.error = outcome.error or f"no_reply: {exc}"
    finally:
        sender.close()
        reader.close()
    return outcome


def run_streams(address: str, clips: Sequence[LiveClip], options: dict[str, Any] | None = None,
                chunk_s: float = CHUNK_S, websocket_url: str | None = None) -> list[StreamOutcome]:
    """Every clip as its own stream, all at once (starts staggered over one chunk); over
    ZeroMQ to `address`, or through the gateway's Realtime WebSocket at `websocket_url`."""
    began = time.perf_counter() + 0.5
    outcomes: list[StreamOutcome | None] = [None] * len(clips)

    def one(index: int) -> None:
        start_at = began + chunk_s * index / max(1, len(clips))
        if websocket_url is not None:
            outcomes[index] = replay_realtime(websocket_url, clips[index], start_at, chunk_s)
        else:
            outcomes[index] = replay(address, clips[index], start_at, chunk_s, options)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(clips))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [o for o in outcomes if o is not None]


# --- pure arithmetic ------------------------------------------------------------------------


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def final_latencies(outcome: StreamOutcome) -> list[float]:
    """Per final: its arrival minus the end of the clip's utterance it overlaps most."""
    latencies = []
    for arrived, event in outcome.events:
        if event.get("type") != "final":
            continue
        start, end = float(event["start_s"]), float(event["end_s"] or event["start_s"])
        best = max(outcome.clip.utterances, key=lambda u: _overlap(start, end, u.start_s, u.end_s))
        latencies.append(arrived - best.end_s)
    return latencies


def partial_latencies(outcome: StreamOutcome) -> list[float]:
    return [arrived - float(event["end_s"]) for arrived, event in outcome.events
            if event.get("type") == "partial" and event.get("end_s") is not None]


def finals_text(outcome: StreamOutcome) -> str:
    return " ".join(e["text"] for _, e in outcome.events if e.get("type") == "final")


def pooled_wer(pairs: Sequence[tuple[str, str]]) -> float | None:
    """Word errors over reference words, over all (reference, hypothesis) pairs, after
    Whisper's English normaliser ("3" is "three"), as a fraction."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from wer_set import wer

    if not pairs:
        return None
    return wer([ref for ref, _ in pairs], [hyp for _, hyp in pairs]) / 100


def summarize_live(outcomes: Sequence[StreamOutcome]) -> dict[str, Any]:
    finals = [x for o in outcomes for x in final_latencies(o)]
    partials = [x for o in outcomes for x in partial_latencies(o)]
    expected = sum(len(o.clip.utterances) for o in outcomes)
    errors = [o.error for o in outcomes if o.error] + [
        str((e.get("error") or {}).get("code"))
        for o in outcomes for _, e in o.events if e.get("type") == "error"]
    return {
        "streams": len(outcomes),
        "final_p50_s": percentile(finals, 50),
        "final_p95_s": percentile(finals, 95),
        "partial_p50_s": percentile(partials, 50),
        "partial_p95_s": percentile(partials, 95),
        "finals": len(finals),
        "utterances": expected,
        "partials": len(partials),
        "wer_finals": pooled_wer([(o.clip.text, finals_text(o)) for o in outcomes]),
        "errors": errors,
    }


def most_streams_within(rows: Sequence[dict[str, Any]], bound_s: float) -> int:
    """The most streams of a sweep whose final p95 stayed within `bound_s` (0: none did),
    counting only levels where every lower level held too."""
    held = 0
    for row in sorted(rows, key=lambda r: r["streams"]):
        p95 = row.get("final_p95_s")
        if p95 is None or p95 > bound_s or row.get("errors") or row.get("finals") != row.get("utterances"):
            break
        held = row["streams"]
    return held


# --- the stage ------------------------------------------------------------------------------

#: batched: the bus as configured; unbatched: every decode alone; websocket (with
#: `websocket=True`): batched, each stream through the gateway's /v1/realtime.
MODES = ("batched", "unbatched")
#: The issue's bound: final latency p95 after the end of speech.
FINAL_P95_BOUND_S = 1.5


def live_stage(bus: Any, levels: Sequence[int], rounds: int, bound_s: float = FINAL_P95_BOUND_S,
               progress: Any = None, websocket: bool = False) -> dict[str, Any]:
    """N concurrent live streams for each N in `levels`, on the bus as configured ("batched")
    and with batching turned off ("unbatched": every decode runs alone, as a server with one
    decode per stream does), and with `websocket` batched through the gateway's Realtime
    WebSocket too, in `rounds` rounds whose mode order rotates, so drifting machine load
    hits every mode alike. `bus` is bench.bus.Bus serving one STT model."""
    modes = MODES + (("websocket",) if websocket else ())
    clips = make_live_clips(max(levels))
    address = bus.address("stt")
    whole = []
    for clip in clips:  # the same clips sent whole with transcribe, for the WER comparison
        reply = bus.control("stt", {"action": "transcribe", "audio_data": clip.audio.astype("<f4").tobytes(),
                                     "dtype": "float32", "sample_rate": STT_RATE, "language": "en"})
        whole.append((clip.text, reply["text"]))
    runs: dict[str, dict[int, list[StreamOutcome]]] = {m: {n: [] for n in levels} for m in modes}
    per_round: list[dict[str, Any]] = []
    for r in range(rounds):
        for n in levels:
            turn = (r + n) % len(modes)
            for mode in modes[turn:] + modes[:turn]:
                bus.configure("stt", enabled=mode != "unbatched")
                before = bus.control("stt", {"action": "stats"})["live"]
                url = bus.http_url if mode == "websocket" else None
                outcomes = run_streams(address, clips[:n], websocket_url=url)
                after = bus.control("stt", {"action": "stats"})["live"]
                runs[mode][n] += outcomes
                row = summarize_live(outcomes)
                per_round.append({"round": r, "mode": mode, **row, **_stats_delta(before, after)})
                if progress is not None:
                    progress(n)
    bus.configure("stt", enabled=True)
    table: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    for mode in modes:
        for n in levels:
            rows = [row for row in per_round if row["mode"] == mode and row["streams"] == n]
            pooled = summarize_live(runs[mode][n])
            p95s = [row["final_p95_s"] for row in rows if row["final_p95_s"] is not None]
            pooled.update(
                streams=n,
                wer_whole=pooled_wer(whole[:n]),
                final_p95_by_round_s=p95s,
                decodes_skipped=sum(row["decodes_skipped"] for row in rows),
                decodes=sum(row["decodes"] for row in rows),
                mean_decode_batch=_mean_batch([row["decode_batches"] for row in rows]),
            )
            table[mode].append(pooled)
    holds = {mode: most_streams_within(table[mode], bound_s) for mode in modes}
    return {
        "levels": list(levels),
        "rounds": rounds,
        "bound_s": bound_s,
        "table": table,
        "holds": holds,
        "per_round": per_round,
    }


def _stats_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    def total(stats: dict[str, Any]) -> int:
        return sum((stats.get("decodes") or {}).values())

    hist_before = before.get("decode_batch_size_histogram") or {}
    hist_after = after.get("decode_batch_size_histogram") or {}
    batches = {k: v - hist_before.get(k, 0) for k, v in hist_after.items() if v - hist_before.get(k, 0) > 0}
    return {
        "decodes": total(after) - total(before),
        "decodes_skipped": after["decodes_skipped"] - before["decodes_skipped"],
        "decode_batches": batches,
    }


def _mean_batch(histograms: Sequence[dict[str, int]]) -> float | None:
    """Mean batch size a decode ran in (each decode counted once: decodes per size)."""
    decodes = sum(v for h in histograms for v in h.values())
    if not decodes:
        return None
    return sum(int(k) * v for h in histograms for k, v in h.items()) / decodes


def live_table(stage: dict[str, Any]) -> str:
    lines = [f"Live STT streams, real time, 100 ms chunks, {stage['rounds']} rounds; WER: finals, and the "
             "same clips sent whole with transcribe",
             f"{'mode':10} {'streams':>7} {'final p50':>9} {'final p95':>9} {'p95/round':>17} "
             f"{'partial p50':>11} {'partial p95':>11} {'skipped':>7} {'batch':>5} {'WER':>6} "
             f"{'whole':>6} {'finals':>7} errors"]
    for mode, rows in stage["table"].items():
        for row in rows:
            by_round = ",".join(f"{x:.2f}" for x in row["final_p95_by_round_s"])
            lines.append(
                f"{mode:10} {row['streams']:>7} {_s(row['final_p50_s']):>9} {_s(row['final_p95_s']):>9} "
                f"{by_round:>17} {_s(row['partial_p50_s']):>11} {_s(row['partial_p95_s']):>11} "
                f"{row['decodes_skipped']:>7} {_f(row['mean_decode_batch']):>5} {_pct(row['wer_finals']):>6} "
                f"{_pct(row['wer_whole']):>6} {row['finals']:>3}/{row['utterances']:<3} {len(row['errors'])}")
    holds = stage["holds"]
    ratio = holds["batched"] / holds["unbatched"] if holds["unbatched"] else None
    lines.append(f"most streams with final p95 <= {stage['bound_s']:g} s: batched {holds['batched']}, "
                 f"unbatched {holds['unbatched']}" + (f" ({ratio:.1f}x)" if ratio else "")
                 + (f", websocket {holds['websocket']}" if "websocket" in holds else ""))
    return "\n".join(lines)


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"
