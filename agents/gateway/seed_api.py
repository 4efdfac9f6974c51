"""Seed 001's Kokoro server endpoints on the bus: POST /tts (one file), POST /tts/batch (a ZIP
with one file per request and an error file for each that failed), POST /tts/stream
(chunked audio, sentence by sentence) and GET /health/batching. Requests batch in the model
manager with every other client's, so the batching these endpoints report is the bus's."""

from __future__ import annotations

import io
import zipfile
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field

from agents.gateway.bus import CONTROL_TIMEOUT_S
from agents.gateway.formats import OUTPUT_FORMATS, encode_speech, float32_samples
from agents.gateway.openai_api import check_input
from agents.gateway.speech import SpeechJob, open_speech
from agents.gateway.state import Gateway, gateway_of, raise_for_reply, timing_headers, unless_client_leaves
from model_manager.errors import BusError

router = APIRouter()

SeedFormat = Literal["wav", "pcm"]


class TTSRequest(BaseModel):
    text: str
    voice: str | None = None  # the engine's default voice when absent
    speed: Annotated[float, Field(ge=0.25, le=4.0)] = 1.0
    format: SeedFormat = "wav"
    language: str = "en"  # accepted for compatibility; the voice decides the language


class BatchTTSRequest(BaseModel):
    requests: list[TTSRequest]


def _item(gateway: Gateway, item: TTSRequest) -> dict[str, Any]:
    fields: dict[str, Any] = {"text": item.text, "speed": item.speed, "format": "pcm"}
    voice = gateway.names.voice(item.voice)
    if voice:
        fields["voice"] = voice
    return fields


def _headers(voice: str | None, extra: dict[str, str]) -> dict[str, str]:
    return {"X-Voice-Used": voice or "default", "X-Batching-Enabled": "True", **extra}


@router.post("/tts")
async def tts(request: Request, body: TTSRequest) -> Response:
    gateway = gateway_of(request)
    check_input(gateway, body.text, "text")
    gateway.bus.check_ready("tts")
    message = {"action": "synthesize", **_item(gateway, body)}
    reply = raise_for_reply(await unless_client_leaves(request, gateway.bus.request("tts", message)))
    samples = float32_samples(reply["audio"])
    audio = encode_speech(samples, body.format, int(reply["sample_rate"]))
    return Response(audio, media_type=OUTPUT_FORMATS[body.format].media_type, headers=_headers(body.voice, {
        "Content-Disposition": f"attachment; filename=tts_output.{body.format}",
        "X-Audio-Duration": f"{samples.size / int(reply['sample_rate']):.3f}", **timing_headers(reply)}))


@router.post("/tts/batch")
async def tts_batch(request: Request, body: BatchTTSRequest) -> Response:
    """Every item in one `batch_synthesize`; the ZIP holds tts_NNN_VOICE.FORMAT for each item
    that succeeded and error_NNN.txt (code, message, text) for each that failed."""
    gateway = gateway_of(request)
    for item in body.requests:
        check_input(gateway, item.text, "text")
    gateway.bus.check_ready("tts")
    message = {"action": "batch_synthesize", "batch_data": [_item(gateway, item) for item in body.requests]}
    reply = raise_for_reply(await unless_client_leaves(request, gateway.bus.request("tts", message)))
    buffer = io.BytesIO()
    failed = 0
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for number, (item, result) in enumerate(zip(body.requests, reply["results"], strict=True), 1):
            if result.get("status") == "success":
                samples = float32_samples(result["audio"])
                audio = encode_speech(samples, item.format, int(result["sample_rate"]))
                archive.writestr(f"tts_{number:03d}_{item.voice or 'default'}.{item.format}", audio)
            else:
                failed += 1
                error = result.get("error") or {}
                archive.writestr(f"error_{number:03d}.txt", f"Error generating audio: {error.get('code')}: "
                                 f"{error.get('message')}\nText: {item.text[:100]}\n")
    return Response(buffer.getvalue(), media_type="application/zip", headers=_headers(None, {
        "Content-Disposition": "attachment; filename=tts_batch.zip",
        "X-Total-Requests": str(len(body.requests)), "X-Failed-Requests": str(failed)}))


@router.post("/tts/stream")
async def tts_stream(request: Request, body: TTSRequest) -> StreamingResponse:
    gateway = gateway_of(request)
    check_input(gateway, body.text, "text")
    job = SpeechJob(body.text, gateway.names.voice(body.voice), body.speed, None, body.format, "/tts/stream")
    audio = await unless_client_leaves(request, open_speech(gateway, job))
    return StreamingResponse(audio, media_type=OUTPUT_FORMATS[body.format].media_type, headers=_headers(
        body.voice, {"Content-Disposition": f"attachment; filename=tts_stream.{body.format}",
                     "X-Accel-Buffering": "no", "Cache-Control": "no-cache"}))


@router.get("/health/batching")
async def health_batching(request: Request) -> dict[str, Any]:
    """Seed 001's batching report, from the bus's `stats`: the TTS models' queue, totals and
    average batch size, and the batching configuration; `models` has every model's."""
    gateway = gateway_of(request)
    models: dict[str, Any] = {}
    for task in gateway.bus.addresses:
        try:
            reply = await gateway.bus.request(task, {"action": "stats"}, CONTROL_TIMEOUT_S)
        except BusError:  # that agent is down: the report says so through "status"
            continue
        if reply.get("status") == "success":
            models.update({stats["model"]: stats for stats in reply.get("models", [])})
    tts = [m for m in models.values() if m["task"] == "tts"]
    batches = sum(m.get("batches", 0) for m in tts)
    requests = sum(m.get("requests", 0) for m in tts)
    policy = gateway.config.batch_processing_config
    ready = gateway.bus.ready("tts")
    return {
        "batching_enabled": policy.enabled,
        "status": "healthy" if ready else "unhealthy",
        "queue_status": {"current_size": sum(m.get("queue_depth", 0) for m in tts), "worker_running": ready},
        "performance": {"total_batches": batches, "total_requests": requests,
                        "avg_batch_size": round(requests / batches, 3) if batches else 0},
        "config": {"max_batch_size": policy.max_batch_size, "min_batch_size": policy.min_batch_size,
                   "max_wait_ms": policy.max_batch_wait_ms, "dynamic_batching": policy.dynamic_batching,
                   "max_queue_size": policy.max_queue_size},
        "models": {name: {key: m.get(key) for key in ("task", "batches", "requests", "queue_depth",
                                                      "batch_size_histogram", "chosen_batch_size")}
                   for name, m in models.items()},
    }
