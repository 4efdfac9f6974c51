"""The Python client for the bus.

    from agents import model_client
    item = {"audio_data": audio, "sample_rate": 16000, "request_id": "s1"}
    reply = model_client.generate(prompt="Transcribe", model_pref="quality", batch_mode=True,
                                  batch_data=[item])
    # {"status": "success", "results": [{"request_id": "s1", "status": "success", "text": "..."}]}

Items with `audio_data` go to the STT agent, items with `text` to the TTS agent; the results
come back in the order of `batch_data`. An item that fails gets its own error entry and the
others still succeed. Audio travels as raw bytes in msgpack (numpy arrays or lists in).

Every call opens a fresh REQ socket and closes it with linger 0, so a lost reply can never
leave a socket stuck in the REQ state machine. When an agent does not answer a health probe
within `connect_timeout_s`, the call returns an error with code "bus_unavailable" instead of
hanging.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import zmq

from model_manager.errors import BAD_REQUEST, BUS_UNAVAILABLE, TIMEOUT


def _env(name: str, default: str) -> Any:
    return field(default_factory=lambda: os.environ.get(name, default))


@dataclass
class ClientConfig:
    """Addresses default to VOICEBUS_STT_ADDRESS / VOICEBUS_TTS_ADDRESS, then the standard ports."""

    stt_address: str = _env("VOICEBUS_STT_ADDRESS", "tcp://localhost:5800")
    tts_address: str = _env("VOICEBUS_TTS_ADDRESS", "tcp://localhost:5801")
    timeout_s: float = 120.0
    connect_timeout_s: float = 3.0


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


class ModelClient:
    def __init__(self, config: ClientConfig | None = None, context: zmq.Context | None = None) -> None:
        self.config = config or ClientConfig()
        self.context = context or zmq.Context.instance()

    def request(
        self, address: str, message: dict[str, Any], timeout_s: float | None = None
    ) -> dict[str, Any]:
        """Send one msgpack request and wait for its reply, or return a bus_unavailable/timeout error."""
        timeout_s = self.config.timeout_s if timeout_s is None else timeout_s
        sock = self.context.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(address)
            sock.send(msgpack.packb(message, use_bin_type=True))
            if not sock.poll(int(timeout_s * 1000)):
                return _error(TIMEOUT, f"no reply from {address} within {timeout_s:g} s")
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
            message: dict[str, Any] = {
                "action": action,
                "batch_data": [_wire_item(items[i]) for i in indices],
            }
            if model_pref is not None:
                message["model_pref"] = model_pref
            reply = self.request(address, message)
            if reply.get("status") != "success":
                return reply
            for index, entry in zip(indices, reply["results"], strict=True):
                results[index] = _from_wire(entry)
        return {"status": "success", "results": results}

    def health(self, task: str = "stt") -> dict[str, Any]:
        address = self.config.stt_address if task == "stt" else self.config.tts_address
        return self.request(address, {"action": "health"}, self.config.connect_timeout_s)


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
