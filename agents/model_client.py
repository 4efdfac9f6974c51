"""The Python client for the bus.

    from agents import model_client
    item = {"audio_data": audio, "sample_rate": 16000, "request_id": "s1"}
    reply = model_client.generate(prompt="Transcribe", model_pref="quality", batch_mode=True,
                                  batch_data=[item])
    # {"status": "success", "results": [{"request_id": "s1", "status": "success", "text": "..."}]}

Items with `audio_data` go to the STT agent, items with `text` to the TTS agent; the results
come back in the order of `batch_data`. An item that fails gets its own error entry and the
others still succeed. Audio travels as raw bytes in msgpack (numpy arrays or lists in).

Reliability (the Lazy Pirate pattern, ZeroMQ guide ch. 4): every attempt opens a fresh REQ
socket and closes it with linger 0, so a lost reply can never leave a socket stuck in the
REQ state machine. A request is sent again, at most `retries` times with a bounded,
jittered exponential backoff, when
- no reply came within `timeout_s`, and the action is idempotent (IDEMPOTENT_ACTIONS:
  running a transcription twice is harmless; queueing a request_id twice is not);
- the reply is an error with a retryable code (errors.RETRYABLE: overloaded,
  model_unavailable, shutting_down), which means the request was not run.
`generate` also sends again the batch items that came back with a retryable code.
After the last attempt the caller gets the last reply, or an error with code "no_reply".
When an agent does not answer a health probe, `generate` returns "bus_unavailable".

Live speech-to-text: `ModelClient.live()` opens a stream; send microphone chunks as they
are recorded and read `speech_started` / `partial` / `speech_ended` / `final` events:

    with ModelClient().live(sample_rate=16000, language="en") as stream:
        for chunk in microphone():             # e.g. 100 ms of float32 or int16 samples
            for event in stream.send(chunk):    # the events ready so far; never waits for inference
                print(event["type"], event["text"])
        for event in stream.close():           # the last utterance's final, and anything left
            print(event["type"], event["text"])

A stream keeps one connection for all its calls: a client that hangs up has its stream ended.

CurveZMQ: give `server_public_key` and a client key pair (`client_secret_key_file`, as
written by ``python -m agents.keys``) to talk to a bus with `security.curve_enabled`.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq
import zmq.auth

from agents.security import secure_client_socket
from model_manager.errors import BAD_REQUEST, BUS_UNAVAILABLE, NO_REPLY, RETRYABLE

#: Actions whose repetition is harmless, so a request without a reply may be sent again.
IDEMPOTENT_ACTIONS = frozenset({
    "health", "stats", "voices", "cancel",
    "transcribe", "synthesize", "batch_transcribe", "batch_synthesize",
})
Z85_KEY_LENGTH = 40


def _env(name: str, default: str | None) -> Any:
    return field(default_factory=lambda: os.environ.get(name, default))


@dataclass
class ClientConfig:
    """Addresses default to VOICEBUS_STT_ADDRESS / VOICEBUS_TTS_ADDRESS, then the standard
    ports; the CURVE keys to VOICEBUS_SERVER_KEY / VOICEBUS_CLIENT_KEY, then none."""

    stt_address: str = _env("VOICEBUS_STT_ADDRESS", "tcp://localhost:5800")
    tts_address: str = _env("VOICEBUS_TTS_ADDRESS", "tcp://localhost:5801")
    timeout_s: float = 120.0  # per attempt
    connect_timeout_s: float = 3.0  # per health probe attempt
    retries: int = 3  # attempts after the first; 0: never send twice
    backoff_s: float = 0.5  # the pause before the first retry; doubles for each next one...
    max_backoff_s: float = 8.0  # ...up to this
    #: The bus's public key: a Z85 string, or the path of its server.key file.
    server_public_key: str | None = _env("VOICEBUS_SERVER_KEY", None)
    #: This client's key pair: the path of its NAME.key_secret file...
    client_secret_key_file: str | None = _env("VOICEBUS_CLIENT_KEY", None)
    #: ...or the (public, secret) Z85 keys themselves.
    client_keypair: tuple[bytes, bytes] | None = None


CurveKeys = tuple[bytes, bytes, bytes]  # server public, client public, client secret


def curve_keys(config: ClientConfig) -> CurveKeys | None:
    """The keys to secure sockets with, None for plaintext; ValueError if half configured."""
    pair = config.client_keypair
    if pair is None and config.client_secret_key_file:
        public, secret = zmq.auth.load_certificate(Path(config.client_secret_key_file).expanduser())
        if not secret:
            raise ValueError(f"{config.client_secret_key_file} holds no secret key (use NAME.key_secret)")
        pair = (public, secret)
    server = config.server_public_key
    if not server and pair is None:
        return None
    if not server or pair is None:
        raise ValueError("CURVE needs both server_public_key and a client key pair")
    if len(server) == Z85_KEY_LENGTH and not Path(server).expanduser().exists():
        server_public = server.encode("ascii")
    else:
        server_public, _ = zmq.auth.load_certificate(Path(server).expanduser())
    return server_public, pair[0], pair[1]


def _error(code: str, message: str) -> dict[str, Any]:
    return {"status": "error", "error": {"code": code, "message": message}}


def encode_audio(audio: Any) -> tuple[bytes, str]:
    """numpy array or list -> (little-endian bytes, dtype name) as the protocol expects."""
    array = np.asarray(audio)
    if array.dtype == np.int16:
        return array.astype("<i2").tobytes(), "int16"
    if array.dtype.kind not in "fiu":
        raise TypeError(f"audio must be numeric, got dtype {array.dtype}")
    return array.astype("<f4").tobytes(), "float32"


def _wire_item(item: dict[str, Any]) -> dict[str, Any]:
    wire = dict(item)
    if "audio_data" in wire and not isinstance(wire["audio_data"], (bytes, bytearray)):
        wire["audio_data"], wire["dtype"] = encode_audio(wire["audio_data"])
    if "text" in wire and "output_path" not in wire:
        wire.setdefault("format", "pcm")  # float32 samples, handed back as a numpy array
    return wire


def _from_wire(entry: dict[str, Any]) -> dict[str, Any]:
    if entry.get("format") == "pcm" and isinstance(entry.get("audio"), (bytes, bytearray)):
        entry = {**entry, "audio": np.frombuffer(entry["audio"], dtype="<f4").astype(np.float32)}
    return entry


def _code(reply: dict[str, Any]) -> str | None:
    error = reply.get("error") if reply.get("status") == "error" else None
    return error.get("code") if isinstance(error, dict) else None


class ModelClient:
    def __init__(self, config: ClientConfig | None = None, context: zmq.Context | None = None) -> None:
        """Raises ValueError when the CURVE settings are half given or unreadable."""
        self.config = config or ClientConfig()
        self.context = context or zmq.Context.instance()
        self.curve = curve_keys(self.config)

    def backoff(self, attempt: int, reply: dict[str, Any] | None = None) -> float:
        """Seconds to wait before retry number `attempt` + 1: exponential, capped, and jittered
        so that clients turned away together do not all come back at once; at least the
        `retry_after_ms` an overloaded reply suggests, within the same cap."""
        ceiling = min(self.config.max_backoff_s, self.config.backoff_s * 2**attempt)
        error = (reply or {}).get("error")
        hint_ms = error.get("retry_after_ms") if isinstance(error, dict) else None
        hint_s = hint_ms / 1000.0 if isinstance(hint_ms, (int, float)) else 0.0
        return max(ceiling * random.uniform(0.5, 1.0), min(hint_s, self.config.max_backoff_s))

    def request(
        self,
        address: str,
        message: dict[str, Any],
        timeout_s: float | None = None,
        retries: int | None = None,
    ) -> dict[str, Any]:
        """Send one msgpack request and return its reply. Retries as the module says, at most
        `retries` (default config.retries) times, each attempt waiting up to `timeout_s`;
        after the last one returns the last reply, or a "no_reply" error."""
        timeout_s = self.config.timeout_s if timeout_s is None else timeout_s
        retries = self.config.retries if retries is None else retries
        may_resend = message.get("action") in IDEMPOTENT_ACTIONS
        attempt = 0
        while True:
            reply = self._attempt(address, message, timeout_s)
            if reply is None:
                if not may_resend or attempt >= retries:
                    tries = f" ({attempt + 1} attempts)" if attempt else ""
                    return _error(NO_REPLY, f"no reply from {address} within {timeout_s:g} s{tries}")
            elif _code(reply) not in RETRYABLE or attempt >= retries:
                return reply
            time.sleep(self.backoff(attempt, reply))
            attempt += 1

    def _attempt(self, address: str, message: dict[str, Any], timeout_s: float) -> dict[str, Any] | None:
        """One try on a fresh socket: the reply, or None when none came within `timeout_s`."""
        sock = self.context.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            if self.curve is not None:
                secure_client_socket(sock, *self.curve)
            sock.connect(address)
            sock.send(msgpack.packb(message, use_bin_type=True))
            if not sock.poll(int(timeout_s * 1000)):
                return None
            return msgpack.unpackb(sock.recv(), raw=False)
        finally:
            sock.close()

    def _probe(self, address: str) -> dict[str, Any] | None:
        """None if the agent answers health, else the error reply to return."""
        reply = self.request(address, {"action": "health"}, self.config.connect_timeout_s)
        if reply.get("status") != "success":
            return _error(
                BUS_UNAVAILABLE,
                f"no voicebus agent answers at {address} within "
                f"{self.config.connect_timeout_s:g} s; is the bus running? (scripts/run.sh)",
            )
        return None

    def generate(
        self,
        prompt: str = "",
        model_pref: str | None = None,
        batch_mode: bool = False,
        batch_data: Sequence[dict[str, Any]] | None = None,
        **item: Any,
    ) -> dict[str, Any]:
        """Transcribe and/or synthesize `batch_data` (or one item given as keyword arguments).

        `prompt` is accepted for compatibility with callers that describe the job; the
        models do not use it. Returns {"status": "success", "results": [...]} with one entry
        per item, in order, or {"status": "error", "error": {...}} when nothing could run.
        """
        items = list(batch_data or ([item] if item else []))
        if not items:
            return _error(BAD_REQUEST, "give batch_data, or one item as keyword arguments")
        if not batch_mode and len(items) != 1:
            return _error(BAD_REQUEST, f"batch_mode=False takes one item, got {len(items)}")
        routes: dict[str, list[int]] = {"stt": [], "tts": []}
        results: list[dict[str, Any] | None] = [None] * len(items)
        for index, it in enumerate(items):
            if not isinstance(it, dict) or ("audio_data" in it) == ("text" in it):
                results[index] = {
                    "request_id": it.get("request_id", index) if isinstance(it, dict) else index,
                    **_error(BAD_REQUEST, "each item needs exactly one of audio_data (STT) or text (TTS)"),
                }
            else:
                routes["stt" if "audio_data" in it else "tts"].append(index)
        for task, indices in routes.items():
            if not indices:
                continue
            address = self.config.stt_address if task == "stt" else self.config.tts_address
            unavailable = self._probe(address)
            if unavailable:
                return unavailable
            action = "batch_transcribe" if task == "stt" else "batch_synthesize"
            # request_id defaults to the position in batch_data, which stays right when only
            # some items are sent again.
            wire = {i: {"request_id": i, **_wire_item(items[i])} for i in indices}
            # Items turned away with a retryable code were not run: send just those again.
            for attempt in range(self.config.retries + 1):
                if attempt:
                    time.sleep(self.backoff(attempt - 1))
                message: dict[str, Any] = {"action": action, "batch_data": [wire[i] for i in indices]}
                if model_pref is not None:
                    message["model_pref"] = model_pref
                reply = self.request(address, message)
                if reply.get("status") != "success":
                    return reply
                for index, entry in zip(indices, reply["results"], strict=True):
                    results[index] = _from_wire(entry)
                indices = [i for i in indices if _code(results[i] or {}) in RETRYABLE]
                if not indices:
                    break
        return {"status": "success", "results": results}

    def health(self, task: str = "stt") -> dict[str, Any]:
        address = self.config.stt_address if task == "stt" else self.config.tts_address
        return self.request(address, {"action": "health"}, self.config.connect_timeout_s)

    def cancel(self, request_id: str, task: str = "stt") -> dict[str, Any]:
        """Cancel a queue_for_batch request or a stream on the `task` agent (docs/protocol.md)."""
        address = self.config.stt_address if task == "stt" else self.config.tts_address
        return self.request(address, {"action": "cancel", "request_id": request_id})


    def live(self, sample_rate: int = 16000, request_id: str | None = None, **options: Any) -> LiveStream:
        """Open a live STT stream (`stream_open`; `options`: language, model_pref, beam_size,
        partial_interval_ms, end_silence_ms, vad_threshold, context_ms). Raises LiveStreamError if refused."""
        return LiveStream(self, sample_rate, request_id, options)


class LiveStreamError(RuntimeError):
    """A live stream call failed; `reply` is the error reply (`reply["error"]["code"]`)."""

    def __init__(self, reply: dict[str, Any]) -> None:
        super().__init__(str(reply.get("error")))
        self.reply = reply


class LiveStream:
    """One live STT stream on its own REQ socket (see the module docstring). Every call returns
    the events ready since the last one, in order; `done` turns true once no more will come.
    A call without a reply within the timeout raises LiveStreamError(no_reply): audio is never
    sent twice, since a repeated chunk would be heard twice."""

    def __init__(self, client: ModelClient, sample_rate: int, request_id: str | None,
                 options: dict[str, Any]) -> None:
        self.client = client
        self.done = False
        self._sock: zmq.Socket | None = None
        message = {"action": "stream_open", "sample_rate": sample_rate, **options}
        if request_id is not None:
            message["request_id"] = request_id
        self.request_id = self._call(message)["request_id"]

    def send(self, audio: Any) -> list[dict[str, Any]]:
        data, dtype = encode_audio(audio)
        return self._events({"action": "stream_audio", "audio_data": data, "dtype": dtype})

    def events(self, timeout_s: float = 1.0) -> list[dict[str, Any]]:
        """Wait up to `timeout_s` for at least one event (`next_event`)."""
        return self._events({"action": "next_event", "timeout_ms": int(timeout_s * 1000)},
                            timeout_s + self.client.config.timeout_s)

    def close(self) -> list[dict[str, Any]]:
        """End the stream: its last utterance is transcribed; returns the remaining events."""
        try:
            return self._events({"action": "stream_close"})
        finally:
            self._close_socket()

    def cancel(self) -> None:
        try:
            self._call({"action": "cancel"})
        finally:
            self._close_socket()

    def __enter__(self) -> LiveStream:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if self._sock is None:
            return
        if exc_type is not None:
            self.cancel()
        else:
            self.close()

    def _events(self, message: dict[str, Any], timeout_s: float | None = None) -> list[dict[str, Any]]:
        reply = self._call({**message, "request_id": self.request_id}, timeout_s)
        self.done = bool(reply.get("done"))
        return list(reply.get("events", []))

    def _call(self, message: dict[str, Any], timeout_s: float | None = None) -> dict[str, Any]:
        if self._sock is None:
            self._sock = self.client.context.socket(zmq.REQ)
            self._sock.setsockopt(zmq.LINGER, 0)
            if self.client.curve is not None:
                secure_client_socket(self._sock, *self.client.curve)
            self._sock.connect(self.client.config.stt_address)
        timeout_s = self.client.config.timeout_s if timeout_s is None else timeout_s
        self._sock.send(msgpack.packb(message, use_bin_type=True))
        if not self._sock.poll(int(timeout_s * 1000)):
            self._close_socket()  # a REQ socket without its reply cannot send again
            raise LiveStreamError(_error(NO_REPLY, f"no reply to {message['action']} within {timeout_s:g} s"))
        reply = msgpack.unpackb(self._sock.recv(), raw=False)
        if reply.get("status") != "success":
            raise LiveStreamError(reply)
        return reply

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


_default_client: ModelClient | None = None


def generate(
    prompt: str = "",
    model_pref: str | None = None,
    batch_mode: bool = False,
    batch_data: Sequence[dict[str, Any]] | None = None,
    **item: Any,
) -> dict[str, Any]:
    """`ModelClient.generate` on a module-wide client using the default addresses."""
    global _default_client
    if _default_client is None:
        _default_client = ModelClient()
    return _default_client.generate(prompt, model_pref, batch_mode, batch_data, **item)
