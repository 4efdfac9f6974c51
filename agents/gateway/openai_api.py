"""OpenAI's audio API on the bus: /v1/audio/transcriptions, /v1/audio/translations,
/v1/audio/speech, /v1/models and /v1/audio/voices, as the official SDKs call them."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from agents.gateway.bus import CONTROL_TIMEOUT_S
from agents.gateway.errors import ApiError
from agents.gateway.formats import OUTPUT_FORMATS, STT_SAMPLE_RATE, decode_upload
from agents.gateway.speech import SpeechJob, open_speech, speech_file
from agents.gateway.state import Gateway, gateway_of, raise_for_reply, timing_headers, unless_client_leaves
from agents.gateway.transcripts import RESPONSE_FORMATS, TIMED_FORMATS, render, text_deltas
from model_manager.errors import INVALID_FIELD, TEXT_TOO_LONG

router = APIRouter()

GRANULARITIES = ("segment", "word")


async def _transcribe(request: Request, task: str, file: UploadFile, model: str | None, language: str | None,
                      prompt: str | None, temperature: float | None, response_format: str,
                      granularities: list[str], stream: bool) -> Response:
    gateway = gateway_of(request)
    if response_format not in RESPONSE_FORMATS:
        raise ApiError(400, INVALID_FIELD, f"response_format must be one of {list(RESPONSE_FORMATS)}",
                       param="response_format")
    unknown = set(granularities) - set(GRANULARITIES)
    if unknown:
        raise ApiError(400, INVALID_FIELD, f"timestamp_granularities[] must be among {list(GRANULARITIES)}",
                       param="timestamp_granularities[]")
    if temperature is not None and not 0.0 <= temperature <= 1.0:
        raise ApiError(400, INVALID_FIELD, "temperature must be between 0 and 1", param="temperature")
    gateway.bus.check_ready("stt")
    max_seconds = gateway.config.limits.max_audio_seconds
    audio = await asyncio.to_thread(decode_upload, file.file, max_seconds)
    timestamps = None
    if response_format in TIMED_FORMATS or stream:
        timestamps = "word" if response_format == "verbose_json" and "word" in granularities else "segment"
    message: dict[str, Any] = {"action": "transcribe", "audio_data": audio.tobytes(), "dtype": "float32",
                               "sample_rate": STT_SAMPLE_RATE, "task": task}
    optional = {"language": language, "prompt": prompt, "temperature": temperature, "timestamps": timestamps,
                "model_pref": gateway.names.model_pref(model, translation=task == "translate")}
    message.update({key: value for key, value in optional.items() if value not in (None, "")})
    reply = raise_for_reply(await unless_client_leaves(request, gateway.bus.request("stt", message)))
    if stream:
        return StreamingResponse(_transcript_events(reply), media_type="text/event-stream")
    duration = audio.size / STT_SAMPLE_RATE
    body, media_type = render(reply, response_format, task, duration, set(granularities))
    if isinstance(body, dict):
        return JSONResponse(body, headers=timing_headers(reply))
    return PlainTextResponse(body, media_type=media_type, headers=timing_headers(reply))


async def _transcript_events(reply: dict[str, Any]) -> Any:
    """OpenAI's streamed transcription events: one delta per segment, then the whole text."""
    for delta in text_deltas(reply):
        yield f"data: {json.dumps({'type': 'transcript.text.delta', 'delta': delta})}\n\n"
    yield f"data: {json.dumps({'type': 'transcript.text.done', 'text': reply['text']})}\n\n"


FileField = Annotated[UploadFile, File(description="audio in any format FFmpeg reads")]
Granularities = Annotated[list[str], Form(alias="timestamp_granularities[]")]


@router.post("/v1/audio/transcriptions")
async def transcriptions(
    request: Request, file: FileField, model: Annotated[str | None, Form()] = None,
    language: Annotated[str | None, Form()] = None, prompt: Annotated[str | None, Form()] = None,
    temperature: Annotated[float | None, Form()] = None, response_format: Annotated[str, Form()] = "json",
    timestamp_granularities: Granularities = [],  # noqa: B006 - FastAPI copies defaults
    stream: Annotated[bool, Form()] = False,
) -> Response:
    return await _transcribe(request, "transcribe", file, model, language, prompt, temperature,
                             response_format, timestamp_granularities, stream)


@router.post("/v1/audio/translations")
async def translations(
    request: Request, file: FileField, model: Annotated[str | None, Form()] = None,
    prompt: Annotated[str | None, Form()] = None, temperature: Annotated[float | None, Form()] = None,
    response_format: Annotated[str, Form()] = "json",
) -> Response:
    return await _transcribe(request, "translate", file, model, None, prompt, temperature, response_format,
                             [], False)


class VoiceId(BaseModel):
    id: str


class SpeechRequest(BaseModel):
    model: str = "tts-1"
    input: str
    voice: str | VoiceId = "alloy"
    instructions: str | None = None  # accepted for compatibility; Kokoro takes no instructions
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    # Absent: one whole file whose header states its length (what soundfile and other readers of
    # a file need); "audio": encoded bytes streamed sentence by sentence; "sse": events.
    stream_format: Literal["audio", "sse"] | None = None


def check_input(gateway: Gateway, text: str, field: str) -> None:
    if not text.strip():
        raise ApiError(400, INVALID_FIELD, f"{field} must not be empty", param=field)
    limit = gateway.config.gateway.max_input_chars
    if len(text) > limit:
        raise ApiError(413, TEXT_TOO_LONG, f"{field} has {len(text)} characters; the limit is {limit}",
                       param=field)


@router.post("/v1/audio/speech")
async def speech(request: Request, body: SpeechRequest) -> Response:
    gateway = gateway_of(request)
    check_input(gateway, body.input, "input")
    voice = body.voice.id if isinstance(body.voice, VoiceId) else body.voice
    job = SpeechJob(body.input, gateway.names.voice(voice), body.speed, gateway.names.model_pref(body.model),
                    body.response_format, "/v1/audio/speech")
    media_type = OUTPUT_FORMATS[body.response_format].media_type
    if body.stream_format is None:
        return Response(await unless_client_leaves(request, speech_file(gateway, job)), media_type=media_type)
    sse = body.stream_format == "sse"
    audio = await unless_client_leaves(request, open_speech(gateway, job, sse=sse))
    return StreamingResponse(audio, media_type="text/event-stream" if sse else media_type)


def _bus_models(gateway: Gateway) -> list[dict[str, Any]]:
    return [model for task in gateway.bus.addresses
            for model in gateway.bus.health[task].reply.get("models", [])]


@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    gateway = gateway_of(request)
    names = [m["name"] for m in _bus_models(gateway)]
    names += [name for name in gateway.config.gateway.model_names if name not in names]
    return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "voicebus"}
                                       for name in names]}


@router.get("/v1/audio/voices")
async def voices(request: Request) -> dict[str, Any]:
    """The TTS models' voice packs, then the OpenAI voice names mapped onto them."""
    gateway = gateway_of(request)
    gateway.bus.check_ready("tts")
    reply = raise_for_reply(await gateway.bus.request("tts", {"action": "voices"}, CONTROL_TIMEOUT_S))
    packs = sorted({name for names in reply.get("voices", {}).values() for name in names})
    mapped = dict(gateway.config.gateway.voice_names)
    return {"voices": packs + sorted(mapped), "openai_voices": mapped, "by_model": reply.get("voices", {})}
