"""Garbage on a live agent's socket: hundreds of random frames (tests/unit/test_fuzz.py makes
them) each get one error reply, and the agent serves on."""

from __future__ import annotations

import json
import random

import msgpack
import pytest
import zmq
from test_fuzz import KNOWN_CODES, random_frames


@pytest.mark.parametrize("task", ["stt", "tts"])
def test_hundreds_of_random_frames_get_one_error_each_and_the_agent_serves_on(bus, task):
    address = bus.stt_address if task == "stt" else bus.tts_address
    messages = random_frames(random.Random(f"voicebus-{task}"), 300)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    replies = []
    try:
        for frames in messages:
            sock.send_multipart(frames)
        while len(replies) < len(messages) and sock.poll(10_000):
            replies.append(sock.recv_multipart()[-1])
    finally:
        sock.close()
    assert len(replies) == len(messages), "every message gets exactly one reply"
    for raw in replies:
        reply = json.loads(raw) if raw[:1] == b"{" else msgpack.unpackb(raw, raw=False)
        if reply["status"] == "error":
            assert reply["error"]["code"] in KNOWN_CODES, reply
        else:  # a mutation that stayed a health or voices request; nothing ever reaches a model
            assert reply["status"] == "success" and ("service" in reply or "voices" in reply), reply
    health = bus.request({"action": "health"}, address=address, timeout_s=10)
    assert health["ready"] is True
