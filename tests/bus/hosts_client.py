"""A client run inside the agents' simulated host (tests/bus/hosts.py): plain zmq REQ sockets,
as seed clients use. One JSON argument says what to do; each answer is printed as a JSON
line, so the test sees every reply each request got.

    {"do": "transcribe", "count": 24, "clients": 8}           one REQ per request, in threads
    {"do": "queue", "count": 16, "ids": "q"}                   queue_for_batch, then get_result until final
    {"do": "fetch", "ids": ["q0", ...]}                        get_result until final
    {"do": "call", "message": {...}}                           one request, its reply
    {"do": "metrics"}                                          the STT agent's /metrics samples
    {"do": "live", "sentences": [0, 1, 2, 3]}                  one live stream, paced as recorded
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.request
from pathlib import Path

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # speech.py

STT = "tcp://127.0.0.1:5800"


def call(message: dict, address: str = STT, timeout_s: float = 120.0) -> dict:
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    try:
        sock.send_json(message)
        if not sock.poll(int(timeout_s * 1000)):
            return {"status": "no_reply"}
        return json.loads(sock.recv())
    finally:
        sock.close()


def audio(i: int) -> list[float]:
    # Imported here: numpy and scipy cost a second at start-up, which the quick calls
    # (stats, metrics) that tests poll with must not pay.
    from speech import SENTENCES, speak

    return speak(SENTENCES[i % len(SENTENCES)]).tolist()


def emit(line: dict) -> None:
    print(json.dumps(line), flush=True)


def transcribe(count: int, clients: int, extra: dict) -> None:
    lock = threading.Lock()
    todo = list(range(count))

    def worker() -> None:
        while True:
            with lock:
                if not todo:
                    return
                i = todo.pop(0)
            reply = call({"action": "transcribe", "audio_data": audio(i), "request_id": f"t{i}", **extra})
            with lock:
                emit({"request_id": f"t{i}", **brief(reply)})

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def brief(reply: dict) -> dict:
    return {"status": reply.get("status"), "text": reply.get("text"), "echo": reply.get("request_id"),
            "code": (reply.get("error") or {}).get("code")}


def fetch(ids: list[str], timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    pending = list(ids)
    while pending and time.monotonic() < deadline:
        for request_id in list(pending):
            reply = call({"action": "get_result", "request_id": request_id}, timeout_s=10)
            if reply.get("status") in ("pending", "no_reply"):
                continue
            pending.remove(request_id)
            again = call({"action": "get_result", "request_id": request_id}, timeout_s=10)
            # A final result is handed out once: a second fetch must find nothing.
            second = (again.get("error") or {}).get("code")
            emit({"request_id": request_id, **brief(reply), "second_fetch": second})
        time.sleep(0.3)
    for request_id in pending:
        emit({"request_id": request_id, "status": "never_final"})


def live(sentences: list[int]) -> None:
    """One live stream of `sentences` (indices), each followed by 1 s of silence, sent in
    100 ms chunks at the pace of a microphone; every event is printed as it comes."""
    import numpy as np
    from speech import SENTENCES, speak

    rate, chunk = 16000, 1600
    pause = np.zeros(rate, np.float32)
    microphone = np.concatenate([part for i in sentences for part in (speak(SENTENCES[i]), pause)])
    opened = call({"action": "stream_open", "sample_rate": rate, "language": "en"})
    stream = opened["request_id"]
    began = time.monotonic()
    for k, start in enumerate(range(0, len(microphone), chunk)):
        reply = call({"action": "stream_audio", "request_id": stream,
                      "audio_data": microphone[start:start + chunk].tolist()})
        for event in reply.get("events", []):
            emit({"event": event.get("type"), "text": event.get("text"), "chunk": k})
        if reply.get("status") != "success":
            emit({"event": "error", "reply": reply})
        time.sleep(max(0.0, began + (k + 1) * chunk / rate - time.monotonic()))
    closed = call({"action": "stream_close", "request_id": stream})
    for event in closed.get("events", []):
        emit({"event": event.get("type"), "text": event.get("text"), "chunk": -1})
    emit({"event": "closed", "status": closed.get("status")})


def main() -> None:
    script = json.loads(sys.argv[1])
    do = script["do"]
    if do == "transcribe":
        transcribe(script["count"], script.get("clients", 4), script.get("extra", {}))
    elif do == "queue":
        prefix = script.get("ids", "q")
        for i in range(script["count"]):
            reply = call({"action": "queue_for_batch", "audio_data": audio(i), "request_id": f"{prefix}{i}"})
            emit({"queued": f"{prefix}{i}", "status": reply.get("status")})
        if script.get("fetch", True):
            fetch([f"{prefix}{i}" for i in range(script["count"])])
    elif do == "fetch":
        fetch(script["ids"])
    elif do == "live":
        live(script["sentences"])
    elif do == "call":
        emit(call(script["message"], script.get("address", STT)))
    elif do == "metrics":
        text = urllib.request.urlopen(script.get("url", "http://127.0.0.1:5892/metrics"), timeout=5).read()
        samples = {}
        for line in text.decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                samples[name] = float(value)
        emit(samples)


if __name__ == "__main__":
    main()
