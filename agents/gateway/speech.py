"""Speech out of the bus's TTS `stream`, sentence by sentence: encoded as it comes (shared by
/v1/audio/speech and seed 001's /tts/stream), or gathered into one file (`speech_file`).

`open_speech` waits for the first sentence before it returns, so that anything wrong with the
request (an unknown voice, a bad speed) is an HTTP error with its status, not a broken
stream. After that the audio flows: each sentence is encoded and sent as soon as the bus
hands it over. A sentence that fails later breaks the connection off (the client sees an
incomplete body, never silence in its place), and a client that leaves cancels what is left.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from agents.gateway.bus import BusReplyError
from agents.gateway.errors import ApiError
from agents.gateway.formats import SpeechEncoder, encode_speech, float32_samples
from agents.gateway.state import Gateway, api_error

log = logging.getLogger("voicebus.gateway.speech")


class SpeechFailed(RuntimeError):
    """A sentence after the first failed: the response is cut off."""


@dataclass(frozen=True)
class SpeechJob:
    text: str
    voice: str | None
    speed: float
    model_pref: str | None
    response_format: str
    route: str

    def bus_message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"text": self.text, "speed": self.speed, "format": "pcm"}
        if self.voice:
            message["voice"] = self.voice
        if self.model_pref:
            message["model_pref"] = self.model_pref
        return message


async def _first_sentence(gateway: Gateway, job: SpeechJob
                          ) -> tuple[dict[str, Any], AsyncIterator[dict[str, Any]]]:
    """The bus's first chunk (a success) and the rest of its stream, or the request's ApiError."""
    gateway.bus.check_ready("tts")
    chunks = gateway.bus.stream(job.bus_message())
    try:
        first = await chunks.__anext__()
    except (BusReplyError, StopAsyncIteration) as exc:
        await chunks.aclose()
        if isinstance(exc, BusReplyError):
            raise api_error(exc) from None
        raise ApiError(500, "internal_error", "the bus returned an empty stream", "server_error") from None
    except BaseException:
        await chunks.aclose()
        raise
    if first.get("status") == "error":
        await chunks.aclose()
        raise ApiError.from_bus(first.get("error") or {})
    return first, chunks


async def open_speech(gateway: Gateway, job: SpeechJob, sse: bool = False) -> AsyncIterator[bytes]:
    """The body of a speech response: encoded audio bytes, or server-sent events
    (`speech.audio.delta` with base64 audio, then `speech.audio.done`) with `sse`."""
    started = time.monotonic()
    first, chunks = await _first_sentence(gateway, job)
    return _encoded(gateway, job, first, chunks, started, sse)


async def speech_file(gateway: Gateway, job: SpeechJob) -> bytes:
    """The whole speech as one file whose header states its length: every sentence is
    gathered before a byte is sent, so a sentence that fails is an HTTP error too."""
    started = time.monotonic()
    first, chunks = await _first_sentence(gateway, job)
    pieces = [float32_samples(first["audio"])]
    try:
        async for chunk in chunks:
            if chunk.get("status") == "error":
                raise ApiError.from_bus(chunk.get("error") or {})
            pieces.append(float32_samples(chunk["audio"]))
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
    audio = await asyncio.to_thread(encode_speech, np.concatenate(pieces), job.response_format,
                                    int(first["sample_rate"]))
    gateway.metrics.first_audio.labels(job.route).observe(time.monotonic() - started)
    return audio


async def _encoded(gateway: Gateway, job: SpeechJob, first: dict[str, Any],
                   chunks: AsyncIterator[dict[str, Any]], started: float, sse: bool) -> AsyncIterator[bytes]:
    encoder = SpeechEncoder(job.response_format, int(first["sample_rate"]))
    samples = 0
    try:
        piece = encoder.encode(float32_samples(first["audio"]))
        samples += len(first["audio"]) // 4
        gateway.metrics.first_audio.labels(job.route).observe(time.monotonic() - started)
        yield _event(piece) if sse else piece
        async for chunk in chunks:
            if chunk.get("status") == "error":
                error = chunk.get("error") or {}
                log.error("speech stream cut off: sentence %s failed: %s", chunk.get("index"), error)
                if sse:
                    yield _sse({"type": "error", "error": ApiError.from_bus(error).body()["error"]})
                    return
                raise SpeechFailed(f"sentence {chunk.get('index')} failed: {error.get('code')}")
            samples += len(chunk["audio"]) // 4
            piece = encoder.encode(float32_samples(chunk["audio"]))
            if piece:
                yield _event(piece) if sse else piece
        tail = encoder.finish()
        if sse:
            if tail:
                yield _event(tail)
            usage = {"input_tokens": len(job.text), "output_tokens": samples,
                     "total_tokens": len(job.text) + samples}
            yield _sse({"type": "speech.audio.done", "usage": usage})
        elif tail:
            yield tail
    finally:
        encoder.close()
        await chunks.aclose()  # type: ignore[attr-defined]


def _event(audio: bytes) -> bytes:
    return _sse({"type": "speech.audio.delta", "audio": base64.b64encode(audio).decode("ascii")})


def _sse(event: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(event)}\n\n".encode()
