"""What differs between the STT and the TTS service: action names, how a client item becomes
an engine request, and how an engine result goes back on the wire. Everything else (sockets,
queueing, batching, results, timeouts) is shared in `service_agent.py`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from model_manager.audio import decode_audio
from model_manager.config import Limits
from model_manager.protocol import Encoding

# Client fields that are about the request as a whole, not the model input.
COMMON_FIELDS = ("action", "request_id", "model_pref", "timeout_ms", "priority")


@dataclass(frozen=True)
class Service:
    task: str  # "stt" | "tts"
    single_action: str  # answer one item
    batch_action: str  # answer a batch_data list, in order
    #: Client item fields -> engine request. Raises BusError for anything a client must fix.
    parse_item: Callable[[dict[str, Any], Limits], dict[str, Any]]
    #: Engine result (+ the client item, + the reply encoding) -> reply fields.
    render_result: Callable[[dict[str, Any], dict[str, Any], Encoding], dict[str, Any]]


def parse_stt_item(fields: dict[str, Any], limits: Limits) -> dict[str, Any]:
    # language, task and beam_size are checked by the engine, which knows what it supports.
    request: dict[str, Any] = {"audio": decode_audio(fields, limits.max_audio_seconds)}
    for key in ("language", "task", "beam_size"):
        if fields.get(key) is not None:
            request[key] = fields[key]
    return request


def render_stt_result(result: dict[str, Any], _fields: dict[str, Any], _encoding: Encoding) -> dict[str, Any]:
    return {"text": result["text"], "language": result.get("language"), "model": result.get("model")}


STT = Service(
    task="stt",
    single_action="transcribe",
    batch_action="batch_transcribe",
    parse_item=parse_stt_item,
    render_result=render_stt_result,
)

SERVICES: dict[str, Service] = {"stt": STT}
