"""What differs between the STT and the TTS service: action names, how a client item becomes
an engine request, and how an engine result goes back on the wire. Everything else (sockets,
queueing, batching, results, timeouts, streaming) is shared in `service_agent.py`."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from agents.items import synthesize_item, transcribe_item
from model_manager.audio import decode_audio, load_resampler
from model_manager.config import Limits
from model_manager.engines.kokoro.text_split import split_for_streaming
from model_manager.errors import INVALID_FIELD, TEXT_TOO_LONG, BusError

ParseItem = Callable[[dict[str, Any], Limits], dict[str, Any]]


RenderResult = Callable[[dict[str, Any], dict[str, Any], Limits], dict[str, Any]]


@dataclass(frozen=True)
class Service:
    task: str  # "stt" | "tts"
    single_action: str  # answer one item
    batch_action: str  # answer a batch_data list, in order
    #: Client item fields -> engine request. Raises BusError for anything a client must fix.
    parse_item: ParseItem
    #: Engine result (+ the client item, the limits) -> reply fields. Binary values are bytes;
    #: the JSON encoder turns them into base64 strings.
    render_result: RenderResult
    #: Engine request -> the requests of its stream chunks, in order; None: no `stream` action.
    split_for_stream: Callable[[dict[str, Any]], list[dict[str, Any]]] | None = None
    #: The client fields `render_result` reads: kept with a journaled job, so that a restarted
    #: agent renders its result as the first one would have.
    render_fields: tuple[str, ...] = ()
    #: Bulky client fields that only `parse_item` reads: not kept once parsed.
    payload_fields: tuple[str, ...] = ()
    #: First-use work of `parse_item` (slow imports), done on a background thread when the
    #: agent starts, never on its socket thread.
    load: Callable[[], None] | None = None


# --- STT ------------------------------------------------------------------------------------


def parse_stt_item(fields: dict[str, Any], limits: Limits) -> dict[str, Any]:
    """Client item -> engine request {audio: float32 16 kHz, and the decoding fields the client
    set: language, task, beam_size, vad, prompt, temperature, timestamps}, or BusError. The
    fields are checked first, as a `TranscribeItem`, then the audio is decoded; which languages
    and tasks a model supports is the engine's business."""
    item = transcribe_item(fields)
    return {"audio": decode_audio(fields, limits.max_audio_seconds), **item.given()}


def render_stt_result(result: dict[str, Any], _fields: dict[str, Any], _limits: Limits) -> dict:
    reply = {"text": result["text"], "language": result.get("language"), "model": result.get("model")}
    reply.update({key: result[key] for key in ("segments", "words") if key in result})
    reply["truncated"] = bool(result.get("truncated", False))
    return reply


# --- TTS ------------------------------------------------------------------------------------


def parse_tts_item(fields: dict[str, Any], limits: Limits) -> dict[str, Any]:
    """Client item -> engine request {text, voice?, speed?}, or BusError. The fields are
    checked first, as a `SynthesizeItem`, then the text's length and the output path. Voice
    names and the speed range are checked by the engine, which knows its voices."""
    item = synthesize_item(fields)
    if len(item.text) > limits.max_text_chars:
        raise BusError(
            TEXT_TOO_LONG, f"text has {len(item.text)} characters; the limit is {limits.max_text_chars}"
        )
    if item.output_path is not None:
        confined_output_path(item.output_path, limits)
    request: dict[str, Any] = {"text": item.text}
    if item.voice is not None:
        request["voice"] = item.voice
    if item.speed is not None:
        request["speed"] = item.speed
    return request


def confined_output_path(value: str, limits: Limits) -> Path:
    """`value` (a file name, as `SynthesizeItem` checked it) resolved under limits.output_dir,
    for a new file; anything that would leave the directory, name a directory, or replace an
    existing file is refused (a result never overwrites another one)."""
    root = Path(limits.output_dir).resolve()
    path = (root / value).resolve()
    if not path.is_relative_to(root) or path == root:
        raise BusError(INVALID_FIELD, f"output_path {value!r} is outside the output directory")
    if path.is_dir():
        raise BusError(INVALID_FIELD, f"output_path {value!r} is a directory; name a file")
    if path.exists():
        raise BusError(INVALID_FIELD, f"output_path {value!r} already exists; name a new file")
    return path


def write_output(path: Path, data: bytes, value: str) -> None:
    """Write a new file at `path` (from `confined_output_path`); a file that appeared since,
    or a parent that is not a directory, is an invalid_field error, never an overwrite."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "xb") as out:
            out.write(data)
    except FileExistsError:
        raise BusError(INVALID_FIELD, f"output_path {value!r} already exists; name a new file") from None
    except (NotADirectoryError, IsADirectoryError, FileNotFoundError) as exc:
        raise BusError(INVALID_FIELD, f"output_path {value!r} cannot be written: {exc.strerror}") from None


def wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, audio, sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def render_tts_result(result: dict[str, Any], fields: dict[str, Any], limits: Limits) -> dict:
    audio = np.asarray(result["audio"], dtype=np.float32)
    rate = int(result["sample_rate"])
    audio_format = fields.get("format", "wav")
    reply: dict[str, Any] = {
        "format": audio_format,
        "sample_rate": rate,
        "duration_s": round(len(audio) / rate, 3),
        "model": result.get("model"),
    }
    if fields.get("output_path") is not None:
        path = confined_output_path(fields["output_path"], limits)
        write_output(path, wav_bytes(audio, rate), fields["output_path"])
        reply["output_path"] = str(path)
        return reply
    payload = wav_bytes(audio, rate) if audio_format == "wav" else audio.astype("<f4").tobytes()
    reply["audio"] = payload
    return reply


def split_tts_for_stream(request: dict[str, Any]) -> list[dict[str, Any]]:
    """The stream's chunks: the Kokoro engine's own splitter (one sentence each, pause
    markers kept in place). A bad pause marker is an invalid_field error at once."""
    try:
        texts = split_for_streaming(request["text"])
    except ValueError as exc:
        raise BusError(INVALID_FIELD, str(exc)) from None
    return [{**request, "text": text} for text in texts] or [request]


STT = Service(
    task="stt",
    single_action="transcribe",
    batch_action="batch_transcribe",
    parse_item=parse_stt_item,
    render_result=render_stt_result,
    payload_fields=("audio_data",),
    load=load_resampler,
)
TTS = Service(
    task="tts",
    single_action="synthesize",
    batch_action="batch_synthesize",
    parse_item=parse_tts_item,
    render_result=render_tts_result,
    split_for_stream=split_tts_for_stream,
    render_fields=("format", "output_path"),
)

SERVICES: dict[str, Service] = {"stt": STT, "tts": TTS}
