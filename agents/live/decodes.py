"""A live stream's decodes as transcribe jobs, and their answers as typed records.

`DecodeJob.of` turns a session's `DecodeRequest` into the job the agent sends: its request,
priority, timeout and target. When the job ends, its outcome (the model manager's result,
or the BusError that ended it) reaches the stream as a `Decoded` or that BusError
(`decode_outcome`), never as a reply rendered for a client: a live decode has no client
of its own, its answer becomes events of the stream.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agents.live.session import DecodeRequest
from agents.live.settings import LiveSettings
from model_manager.errors import BusError

#: Decode priorities on the model manager's scale (lower runs first; 0 is interactive).
FINAL_PRIORITY = -1
PARTIAL_PRIORITY = 0


@dataclass(frozen=True)
class Decoded:
    """What a decode heard: the part of a model manager's transcribe result a stream uses."""

    text: str
    language: str | None = None
    #: How many jobs the engine batch it ran in held (None: the result did not say).
    batch_size: int | None = None

    @classmethod
    def of(cls, result: Mapping[str, Any]) -> Decoded:
        """From a transcribe result (docs/protocol.md §3), with its `timing`."""
        language = result.get("language")
        timing = result.get("timing")
        batch_size = timing.get("batch_size") if isinstance(timing, Mapping) else None
        return cls(str(result.get("text", "")), language if isinstance(language, str) else None,
                   batch_size if isinstance(batch_size, int) else None)


DecodeOutcome = Decoded | BusError


def decode_outcome(outcome: Mapping[str, Any] | BusError) -> DecodeOutcome:
    """A job's outcome as the stream takes it: its result, typed, or why it has none."""
    return outcome if isinstance(outcome, BusError) else Decoded.of(outcome)


@dataclass(frozen=True)
class DecodeJob:
    """One decode, as the transcribe job that carries it to the model manager."""

    job_id: str
    decode_id: int
    final: bool
    #: The stream's decode fields (model_pref, language, task, beam_size), for the job's message.
    fields: Mapping[str, Any]
    #: The engine request: the decode's audio and those fields but model_pref.
    request: dict[str, Any]
    priority: int
    timeout_ms: int
    #: When the answer is wanted: batches are sized so that the most urgent job's answer
    #: comes by then, as the engine's measured costs predict.
    target_ms: int

    @classmethod
    def of(cls, decode: DecodeRequest, fields: Mapping[str, Any], settings: LiveSettings) -> DecodeJob:
        request = {"audio": decode.audio, **{k: v for k, v in fields.items() if k != "model_pref"}}
        if decode.final:
            return cls(uuid.uuid4().hex, decode.decode_id, True, fields, request, FINAL_PRIORITY,
                       settings.request_timeout_ms, settings.final_target_ms)
        # A partial not answered in time is given up: the next one covers its audio.
        timeout_ms = min(settings.request_timeout_ms, settings.partial_timeout_ms)
        return cls(uuid.uuid4().hex, decode.decode_id, False, fields, request, PARTIAL_PRIORITY,
                   timeout_ms, settings.partial_target_ms)
