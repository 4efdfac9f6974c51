"""The client's Lazy Pirate retries, against a scripted agent on a real socket (no models)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import msgpack
import numpy as np
import pytest
import zmq
from conftest import free_port

from agents.model_client import ClientConfig, ModelClient

Handler = Callable[[dict, int], dict | None]  # (request, how many came before) -> reply, None: no reply


class ScriptedAgent:
    """A ROUTER socket answering as `handler` says; records every request it receives."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.received: list[dict] = []
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        sock = zmq.Context.instance().socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(self.address)
        self._ready.set()
        try:
            while not self._stop.is_set():
                if not sock.poll(20):
                    continue
                *envelope, body = sock.recv_multipart()
                request = msgpack.unpackb(body, raw=False)
                reply = self.handler(request, len(self.received))
                self.received.append(request)
                if reply is not None:
                    sock.send_multipart([*envelope, msgpack.packb(reply, use_bin_type=True)])
        finally:
            sock.close()

    def __enter__(self) -> ScriptedAgent:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


OK = {"status": "success"}


def error(code: str) -> dict:
    return {"status": "error", "error": {"code": code, "message": code}}


def client(address: str, retries: int = 3) -> ModelClient:
    return ModelClient(
        ClientConfig(
            stt_address=address,
            tts_address=address,
            timeout_s=0.3,
            connect_timeout_s=0.3,
            retries=retries,
            backoff_s=0.01,
            max_backoff_s=0.05,
        )
    )


@pytest.fixture
def scripted() -> Iterator[Callable[[Handler], ScriptedAgent]]:
    agents: list[ScriptedAgent] = []

    def make(handler: Handler) -> ScriptedAgent:
        agents.append(ScriptedAgent(handler).__enter__())
        return agents[-1]

    yield make
    for agent in agents:
        agent.__exit__()


def test_a_lost_reply_is_retried_on_a_fresh_socket(scripted):
    agent = scripted(lambda request, n: None if n == 0 else OK)
    assert client(agent.address).request(agent.address, {"action": "transcribe"}) == OK
    assert len(agent.received) == 2


@pytest.mark.parametrize("code", ["overloaded", "model_unavailable", "shutting_down"])
def test_retryable_codes_are_retried_even_for_queue_for_batch(scripted, code):
    agent = scripted(lambda request, n: error(code) if n < 2 else OK)
    reply = client(agent.address).request(agent.address, {"action": "queue_for_batch", "text": "Hi."})
    assert reply == OK and len(agent.received) == 3


@pytest.mark.parametrize("code", ["invalid_field", "timeout", "inference_failed", "not_found"])
def test_other_errors_are_returned_at_once(scripted, code):
    agent = scripted(lambda request, n: error(code))
    reply = client(agent.address).request(agent.address, {"action": "transcribe"})
    assert reply["error"]["code"] == code and len(agent.received) == 1


def test_retries_are_bounded_and_end_in_no_reply(scripted):
    agent = scripted(lambda request, n: None)
    started = time.monotonic()
    reply = client(agent.address, retries=2).request(agent.address, {"action": "batch_transcribe"})
    assert reply["status"] == "error" and reply["error"]["code"] == "no_reply"
    assert "3 attempts" in reply["error"]["message"]
    assert len(agent.received) == 3
    assert time.monotonic() - started < 3 * 0.3 + 1.0


def test_a_request_that_is_not_idempotent_is_not_resent_without_a_reply(scripted):
    agent = scripted(lambda request, n: None)
    reply = client(agent.address).request(agent.address, {"action": "queue_for_batch", "text": "Hi."})
    assert reply["error"]["code"] == "no_reply" and len(agent.received) == 1


def test_generate_resends_only_the_items_turned_away(scripted):
    def handler(request: dict, n: int) -> dict:
        if request["action"] == "health":
            return OK
        items = request["batch_data"]
        if len(items) == 3:  # first try: the middle item finds the queue full
            return {"status": "success", "results": [OK, error("overloaded"), OK]}
        assert [i["request_id"] for i in items] == ["b"]
        return {"status": "success", "results": [{**OK, "request_id": "b"}]}

    agent = scripted(handler)
    audio = np.zeros(1600, np.float32)
    batch = [{"audio_data": audio, "request_id": rid} for rid in "abc"]
    reply = client(agent.address).generate(batch_mode=True, batch_data=batch)
    assert [r["status"] for r in reply["results"]] == ["success"] * 3
    assert reply["results"][1]["request_id"] == "b"
    assert [r["action"] for r in agent.received] == ["health", "batch_transcribe", "batch_transcribe"]


def test_no_bus_at_all_is_bus_unavailable_within_the_retry_budget():
    address = f"tcp://127.0.0.1:{free_port()}"
    started = time.monotonic()
    reply = client(address, retries=1).generate(audio_data=np.zeros(1600, np.float32))
    assert reply["error"]["code"] == "bus_unavailable"
    assert time.monotonic() - started < 2 * 0.3 + 1.0


def test_the_retry_after_hint_of_an_overloaded_reply_is_honoured(scripted):
    hint = {**error("overloaded"), "error": {**error("overloaded")["error"], "retry_after_ms": 300}}
    agent = scripted(lambda request, n: hint if n == 0 else OK)
    patient = client(agent.address)
    patient.config.max_backoff_s = 1.0  # the hint is followed up to this cap
    started = time.monotonic()
    assert patient.request(agent.address, {"action": "transcribe"}) == OK
    assert time.monotonic() - started >= 0.3
