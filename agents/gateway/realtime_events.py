"""OpenAI's Realtime transcription protocol, the pure part: a session's settings from
`session.update`, and the bus's live-stream events turned into Realtime server events.

Contract of `RealtimeSettings.updated(session)`: the settings with the fields that `session`
(a `session.update`'s `session` object, GA or beta shape) sets; RealtimeError, naming the
field, for a value of the wrong type or one voicebus cannot honour (a format other than
audio/pcm, audio/pcmu, audio/pcma; a `rate` outside 8000..48000; `semantic_vad`; a
transcription `prompt`, which live decodes do not take so that they batch together). The
session is checked by the typed records of realtime_session.py, which say what each field
may be. Fields it does not know are ignored, as OpenAI's own server ignores what does not
apply to transcription.

Contract of `TranscriptEvents`:
- `take(bus_events)` takes live-stream events in any order and returns the Realtime events
  of those now in the stream's order (by `seq`), each bus event translated once;
- each utterance is one item (`item_id`), numbered across the whole connection, so a
  connection that runs several bus streams one after another (a commit starts a new
  one) never reuses an id; times are in ms of all the audio the connection sent;
- `speech_started` -> `input_audio_buffer.speech_started`; `speech_ended` ->
  `input_audio_buffer.speech_stopped` and `input_audio_buffer.committed`; a partial's newly
  committed words -> `conversation.item.input_audio_transcription.delta` (words that may
  still change are never sent: a delta is never taken back); `final` -> a delta with the
  rest of the transcript, then `...transcription.completed`, so an item's deltas always
  add up to its transcript; `error` -> `...transcription.failed`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from agents.gateway.realtime_session import DEFAULT_PCM_RATE, Session, refusal_of


class RealtimeError(Exception):
    """A client event voicebus refuses: an `error` event, the connection stays open."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


@dataclass(frozen=True)
class RealtimeSettings:
    model: str = "whisper-1"  # as the client named it; the gateway maps it to a bus model
    language: str | None = None
    format: str = "audio/pcm"
    sample_rate: int = DEFAULT_PCM_RATE
    #: server_vad: the bus finds the utterances; False (turn_detection null): each
    #: `input_audio_buffer.commit` is one item, transcribed whole.
    server_vad: bool = True
    silence_duration_ms: int = 500
    threshold: float = 0.5

    def updated(self, session: Any) -> RealtimeSettings:
        if not isinstance(session, dict):
            raise RealtimeError("invalid_value", "session must be an object", "session")
        session = from_beta_shape(session)
        try:
            audio_input = Session.model_validate(session).audio_input()
        except ValidationError as error:
            raise RealtimeError(*refusal_of(error, session)) from None
        # An update changes what it sends, and only that.
        sent = audio_input.model_fields_set
        settings = self
        if "format" in sent:
            settings = replace(settings, format=audio_input.format.type, sample_rate=audio_input.format.rate)
        transcription = audio_input.transcription
        if transcription is not None:
            if transcription.model:
                settings = replace(settings, model=transcription.model)
            if "language" in transcription.model_fields_set:
                settings = replace(settings, language=transcription.language or None)
        if "turn_detection" in sent:
            turn = audio_input.turn_detection
            settings = replace(settings, server_vad=turn is not None)
            if turn is not None and turn.silence_duration_ms is not None:
                settings = replace(settings, silence_duration_ms=turn.silence_duration_ms)
            if turn is not None and turn.threshold is not None:
                settings = replace(settings, threshold=turn.threshold)
        return settings

    def session_object(self) -> dict[str, Any]:
        """The session as `session.created` and `session.updated` show it."""
        fmt: dict[str, Any] = {"type": self.format}
        if self.format == "audio/pcm":
            fmt["rate"] = self.sample_rate
        turn = {"type": "server_vad", "silence_duration_ms": self.silence_duration_ms,
                "threshold": self.threshold} if self.server_vad else None
        return {"type": "transcription", "audio": {"input": {
            "format": fmt, "transcription": {"model": self.model, "language": self.language},
            "turn_detection": turn, "noise_reduction": None}}, "include": []}


#: The beta API's `input_audio_format` names.
BETA_FORMATS = {"pcm16": {"type": "audio/pcm", "rate": DEFAULT_PCM_RATE},
                "g711_ulaw": {"type": "audio/pcmu"}, "g711_alaw": {"type": "audio/pcma"}}


def from_beta_shape(session: dict[str, Any]) -> dict[str, Any]:
    """A beta `transcription_session.update` session (`input_audio_format`,
    `input_audio_transcription`, `turn_detection` at the top) in the GA shape (under
    `audio.input`), which clients built on the beta API still send; a GA session as it is."""
    beta_keys = ("input_audio_format", "input_audio_transcription", "turn_detection")
    if not any(key in session for key in beta_keys):
        return session
    audio_input: dict[str, Any] = {}
    if "input_audio_format" in session:
        name = session["input_audio_format"]
        # str(): a name that is a list or an object is refused as an unknown format, not a crash.
        audio_input["format"] = BETA_FORMATS.get(str(name), {"type": str(name)})
    if "input_audio_transcription" in session:
        audio_input["transcription"] = session["input_audio_transcription"]
    if "turn_detection" in session:
        audio_input["turn_detection"] = session["turn_detection"]
    return {"type": "transcription", "audio": {"input": audio_input}}


@dataclass
class TranscriptEvents:
    """Bus live-stream events -> Realtime server events, for one bus stream at a time."""

    item_prefix: str
    offset_ms: int = 0  # where the current bus stream starts in the connection's audio
    _ids: itertools.count = field(default_factory=itertools.count)
    _items: itertools.count = field(default_factory=itertools.count)
    _next_seq: int = 0
    _held: dict[int, dict[str, Any]] = field(default_factory=dict)
    _item_of: dict[int, str] = field(default_factory=dict)  # utterance -> item id
    _sent_text: dict[int, str] = field(default_factory=dict)  # utterance -> what deltas said
    _last_committed: str | None = None  # the item before the next one committed

    def next_stream(self, offset_ms: int) -> None:
        """A new bus stream starts, `offset_ms` into the connection's audio."""
        self.offset_ms, self._next_seq = offset_ms, 0
        self._held.clear()
        self._item_of.clear()
        self._sent_text.clear()

    def event(self, type_: str, **fields: Any) -> dict[str, Any]:
        return {"event_id": f"event_{self.item_prefix}_{next(self._ids)}", "type": type_, **fields}

    def new_item(self) -> str:
        return f"item_{self.item_prefix}_{next(self._items)}"

    def committed(self, item: str) -> dict[str, Any]:
        previous, self._last_committed = self._last_committed, item
        return self.event("input_audio_buffer.committed", item_id=item, previous_item_id=previous)

    def take(self, bus_events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for bus_event in bus_events:
            self._held[int(bus_event.get("seq", self._next_seq))] = bus_event
        out: list[dict[str, Any]] = []
        while self._next_seq in self._held:
            out += self._translate(self._held.pop(self._next_seq))
            self._next_seq += 1
        return out

    def _translate(self, bus_event: dict[str, Any]) -> list[dict[str, Any]]:
        kind, utterance = bus_event["type"], int(bus_event["utterance"])
        if utterance not in self._item_of:
            self._item_of[utterance] = self.new_item()
        item = self._item_of[utterance]
        if kind == "speech_started":
            return [self.event("input_audio_buffer.speech_started", item_id=item,
                               audio_start_ms=self._ms(bus_event["start_s"]))]
        if kind == "speech_ended":
            return [self.event("input_audio_buffer.speech_stopped", item_id=item,
                               audio_end_ms=self._ms(bus_event["end_s"])),
                    self.committed(item)]
        if kind == "partial":
            return self._delta(utterance, item, str(bus_event.get("committed") or ""))
        if kind == "final":
            duration_s = max(0.0, float(bus_event.get("end_s") or 0) - float(bus_event.get("start_s") or 0))
            return self.completed(item, str(bus_event.get("text") or ""), duration_s,
                                  sent=self._sent_text.get(utterance, ""))
        if kind == "error":
            return [self.failed(item, bus_event.get("error") or {})]
        return []

    def completed(self, item: str, transcript: str, duration_s: float, sent: str = ""
                  ) -> list[dict[str, Any]]:
        """An item's transcript: a delta with what the deltas `sent` so far did not say (a
        final always starts with the committed words sent), then `completed`."""
        out = []
        if len(transcript) > len(sent) and transcript.startswith(sent):
            out.append(self._delta_event(item, transcript[len(sent):]))
        out.append(self.event("conversation.item.input_audio_transcription.completed", item_id=item,
                              content_index=0, transcript=transcript,
                              usage={"type": "duration", "seconds": round(duration_s, 3)}))
        return out

    def failed(self, item: str, error: dict[str, Any]) -> dict[str, Any]:
        return self.event("conversation.item.input_audio_transcription.failed", item_id=item, content_index=0,
                          error={"type": "server_error", "code": error.get("code"),
                                 "message": error.get("message"), "param": None})

    def _delta(self, utterance: int, item: str, text: str) -> list[dict[str, Any]]:
        """A delta from what was sent of the utterance to `text`, when `text` extends it."""
        sent = self._sent_text.get(utterance, "")
        if not text.startswith(sent) or len(text) == len(sent):
            return []
        self._sent_text[utterance] = text
        return [self._delta_event(item, text[len(sent):])]

    def _delta_event(self, item: str, delta: str) -> dict[str, Any]:
        return self.event("conversation.item.input_audio_transcription.delta", item_id=item, content_index=0,
                          delta=delta)

    def _ms(self, seconds: Any) -> int:
        return self.offset_ms + round(float(seconds or 0) * 1000)


def whole_item_events(events: TranscriptEvents, item: str, reply: dict[str, Any], duration_s: float
                      ) -> list[dict[str, Any]]:
    """The events of a committed buffer transcribed whole (turn_detection null), from the
    bus's `transcribe` reply: its transcript, or its error."""
    if reply.get("status") == "error":
        return [events.failed(item, reply.get("error") or {})]
    return events.completed(item, str(reply.get("text") or ""), duration_s)
