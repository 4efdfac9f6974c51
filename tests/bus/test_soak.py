"""Soak: 8 clients, mixed STT and TTS, random bad input, one kill -9 of the model manager.

Every request must be answered: a success, or an error reply (retryable ones such as
model_unavailable while the model manager restarts are fine). A request with no reply at all
within its timeout is lost, and lost must be 0. Bounded to about a minute of traffic.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import msgpack
import numpy as np
import zmq
from speech import SENTENCES, speak
from test_reliability import child_process, wait_ready

from agents.model_client import ClientConfig, ModelClient

CLIENTS = 8
SOAK_S = 45.0  # new requests are sent for this long...
# ...and the model manager is killed once every client could have had a reply, or this far in.
KILL_BY_S = 15.0
# Beyond the fragile bus's request timeout (60 s) plus the agent's grace (2 s): a reply that
# has not come by then never will.
REPLY_TIMEOUT_S = 75.0
TEXTS = ["Hello.", "Good night.", "Yes, please.", "See you."]  # short: TTS is costly on a CPU


@dataclass
class Tally:
    sent: int = 0
    ok: int = 0
    error: int = 0
    lost: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    accepted_bad: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, what: str, reply: dict | None, bad: bool) -> None:
        with self.lock:
            self.sent += 1
            if reply is None:
                self.lost += 1
                self.codes[f"LOST {what}"] += 1
            elif reply.get("status") == "success":
                self.ok += 1
                if bad:
                    self.accepted_bad.append(what)
            else:
                self.error += 1
                self.codes[reply["error"]["code"]] += 1


def send(address: str, frame: bytes, timeout_s: float = REPLY_TIMEOUT_S) -> dict | None:
    """One attempt on a fresh REQ socket: the decoded reply, or None when none came."""
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    try:
        sock.send(frame)
        if not sock.poll(int(timeout_s * 1000)):
            return None
        raw = sock.recv()
        return json.loads(raw) if raw[:1] == b"{" else msgpack.unpackb(raw, raw=False)
    finally:
        sock.close()


def pack(message: dict) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def bad_inputs() -> list[tuple[str, str, bytes]]:
    """(name, service, frame): each must get an error reply, and cost no inference."""
    long_audio = np.zeros(16000 * 31, "<i2").tobytes()  # 31 s: over the fragile bus's 30 s, under 1 MiB
    return [
        ("garbage", "stt", b"\xc1\xff garbage"),
        ("bad json", "tts", b'{"action": "synthesize", "text": '),
        ("unknown action", "stt", pack({"action": "dance"})),
        ("nan audio", "stt", b'{"action": "transcribe", "audio_data": [0.0, NaN]}'),
        ("empty text", "tts", pack({"action": "synthesize", "text": ""})),
        ("text too long", "tts", pack({"action": "synthesize", "text": "x" * 20_001})),
        ("audio too long", "stt", pack({"action": "transcribe", "audio_data": long_audio, "dtype": "int16"})),
        ("too large", "stt", pack({"action": "transcribe", "audio_data": b"\x00" * (1100 * 1024)})),
        ("too many items", "tts", pack({"action": "batch_synthesize", "batch_data": [{}] * 65})),
        ("not found", "tts", pack({"action": "get_result", "request_id": "never-queued"})),
    ]


def client_loop(index: int, bus, audio: list[bytes], tally: Tally, stop_at: float) -> None:
    rng = random.Random(index)
    address = {"stt": bus.stt_address, "tts": bus.tts_address}
    bad = bad_inputs()
    # Two clients use the Python client (retries included), as applications do.
    library = ModelClient(
        ClientConfig(stt_address=address["stt"], tts_address=address["tts"], timeout_s=REPLY_TIMEOUT_S)
    )
    while time.monotonic() < stop_at:
        roll = rng.random()
        clip = rng.choice(audio)
        text = rng.choice(TEXTS)
        if roll < 0.2:
            name, service, frame = rng.choice(bad)
            tally.record(name, send(address[service], frame), bad=True)
        elif index < 2:
            items = [{"audio_data": np.frombuffer(clip, "<f4")}, {"text": text}]
            reply = library.generate(batch_mode=True, batch_data=items[: rng.randint(1, 2)])
            lost = reply.get("status") == "error" and reply["error"]["code"] in (
                "no_reply",
                "bus_unavailable",
            )
            tally.record("generate", None if lost else reply, bad=False)
        elif roll < 0.45:
            item = {"action": "transcribe", "audio_data": clip, "dtype": "float32", "language": "en"}
            tally.record("transcribe", send(address["stt"], pack(item)), bad=False)
        elif roll < 0.65:
            item = {"action": "synthesize", "text": text, "format": "pcm"}
            tally.record("synthesize", send(address["tts"], pack(item)), bad=False)
        elif roll < 0.8:
            items = [
                {"audio_data": clip, "dtype": "float32"},
                {"audio_data": rng.choice(audio), "dtype": "float32"},
            ]
            tally.record(
                "batch",
                send(address["stt"], pack({"action": "batch_transcribe", "batch_data": items})),
                bad=False,
            )
        else:
            service = rng.choice(["stt", "tts"])
            item = {"audio_data": clip, "dtype": "float32"} if service == "stt" else {"text": text}
            tally.record("queued", queue_and_fetch(address[service], item), bad=False)
        time.sleep(rng.uniform(0.05, 0.3))


def queue_and_fetch(address: str, item: dict) -> dict | None:
    """queue_for_batch, then get_result until final: the final reply, or None if it never came."""
    queued = send(address, pack({"action": "queue_for_batch", **item}))
    if queued is None or queued["status"] != "queued":
        return queued
    deadline = time.monotonic() + REPLY_TIMEOUT_S
    while time.monotonic() < deadline:
        reply = send(address, pack({"action": "get_result", "request_id": queued["request_id"]}))
        if reply is None or reply["status"] != "pending":
            return reply
        time.sleep(0.5)
    return None


def test_soak_with_a_model_manager_kill_loses_nothing(fragile_bus):
    bus = fragile_bus
    audio = [speak(s).astype("<f4").tobytes() for s in SENTENCES[:3]]  # cached before threads start
    tally = Tally()
    started = time.monotonic()
    stop_at = started + SOAK_S
    threads = [
        threading.Thread(target=client_loop, args=(i, bus, audio, tally, stop_at), daemon=True)
        for i in range(CLIENTS)
    ]
    for t in threads:
        t.start()
    while tally.sent < CLIENTS and time.monotonic() - started < KILL_BY_S:
        time.sleep(0.1)
    killed_at = time.monotonic() - started
    victim = child_process(bus.process.pid, "model_manager")
    victim.kill()
    for t in threads:
        t.join(SOAK_S + 2 * REPLY_TIMEOUT_S)
    elapsed = time.monotonic() - started
    ready_after = wait_ready(bus, bus.stt_address, timeout_s=120)
    print(
        f"\nsoak: {CLIENTS} clients, {elapsed:.0f} s, model manager killed at {killed_at:.0f} s: "
        f"sent={tally.sent} ok={tally.ok} error={tally.error} lost={tally.lost}\n"
        f"soak: errors by code: {dict(tally.codes)}"
    )
    assert not any(t.is_alive() for t in threads)
    assert child_process(bus.process.pid, "model_manager").pid != victim.pid
    assert tally.lost == 0, tally.codes
    assert not tally.accepted_bad, tally.accepted_bad
    # How many succeed depends on the machine (a loaded 2-core CPU serves few); none is wrong.
    assert tally.ok > 0 and tally.sent >= CLIENTS
    assert ready_after < 120
