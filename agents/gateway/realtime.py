"""OpenAI's Realtime transcription sessions over WebSocket, `/v1/realtime`, as the openai SDK's
`client.realtime.connect(extra_query={"intent": "transcription"})` opens them, onto the
bus's live streams, so that browser and voice-agent microphones batch with every other
stream on the bus.

The client sends `session.update`, `input_audio_buffer.append` (base64 audio),
`input_audio_buffer.commit` and `input_audio_buffer.clear`; the server answers with
`session.created`/`session.updated`, the speech and transcription events of
realtime_events.py, and `error` events (the connection stays open after them).

- With `server_vad` turn detection (the default) the audio goes to one bus live stream, in
  16 kHz float32 (PyAV resamples the client's 24 kHz pcm, or 8 kHz G.711, without seams):
  the bus finds the utterances, each one an item with its deltas and its transcript. A
  commit ends the bus stream (the open utterance gets its final) and the next audio opens a
  new one; a clear cancels it.
- With `turn_detection: null` each commit is one item, the buffer since the last commit
  transcribed whole by `transcribe`, as OpenAI's own server does without VAD.

One task sends the audio (the pieces that arrived while the last call was out go together,
so a client sending 20 ms pieces does not make 50 bus calls a second), one waits for the
stream's events with `next_event`; both hand what they get to one `TranscriptEvents`,
which puts the events back in the stream's order. A client that leaves has its stream
cancelled.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import uuid
from typing import Any

import numpy as np
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from agents.gateway.bus import BusReplyError, LiveLink, error_fields
from agents.gateway.formats import STT_SAMPLE_RATE, PcmStreamDecoder
from agents.gateway.realtime_events import (
    RealtimeError,
    RealtimeSettings,
    TranscriptEvents,
    whole_item_events,
)
from agents.gateway.state import Gateway
from model_manager.errors import NOT_FOUND, BusError

log = logging.getLogger("voicebus.gateway.realtime")

router = APIRouter()

#: The most audio one stream_audio call carries (the bus refuses chunks over 10 s).
MAX_CALL_S = 5.0
#: How long one next_event call waits before it asks again.
EVENT_WAIT_MS = 1000


@router.websocket("/v1/realtime")
async def realtime(websocket: WebSocket) -> None:
    gateway: Gateway = websocket.app.state.gateway
    await websocket.accept()
    gateway.metrics.realtime_sessions.inc()
    connection = RealtimeConnection(websocket, gateway)
    log.info("realtime session %s opened", connection.events.item_prefix)
    try:
        await connection.serve()
    finally:
        gateway.metrics.realtime_sessions.dec()
        log.info("realtime session %s closed after %.1f s of audio", connection.events.item_prefix,
                 connection.samples_in / STT_SAMPLE_RATE)


class RealtimeConnection:
    def __init__(self, websocket: WebSocket, gateway: Gateway) -> None:
        self.websocket, self.gateway = websocket, gateway
        self.settings = RealtimeSettings()
        self.events = TranscriptEvents(uuid.uuid4().hex[:12])
        self.decoder = PcmStreamDecoder(self.settings.format, self.settings.sample_rate)
        self.live: LiveRun | None = None  # server_vad: the bus stream the audio goes to
        self.buffer: list[np.ndarray] = []  # turn_detection null: the audio since the last commit
        self.buffered_samples = 0  # in `buffer`, kept as it grows: a turn has thousands of pieces
        self.samples_in = 0  # 16 kHz samples of all the audio sent, for event times
        self._send_lock = asyncio.Lock()

    async def serve(self) -> None:
        await self.send([self.events.event("session.created", session=self.settings.session_object())])
        try:
            while True:
                try:
                    message = await self.websocket.receive()
                except (WebSocketDisconnect, RuntimeError):
                    return
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("text") is None:
                    await self.send_error("invalid_json", "client events are JSON text frames, not binary")
                    continue
                await self._on_client_text(message["text"])
        finally:
            if self.live is not None:
                self.live.cancel()

    async def _on_client_text(self, text: str) -> None:
        event_id = None
        try:
            try:
                message = json.loads(text)
            except ValueError:
                raise RealtimeError("invalid_json", "a client event must be a JSON object") from None
            if not isinstance(message, dict):
                raise RealtimeError("invalid_json", "a client event must be a JSON object")
            event_id = message.get("event_id")
            await self._on_client_event(message)
        except RealtimeError as exc:
            await self.send_error(exc.code, exc.message, exc.param, event_id)
        except (BusReplyError, BusError) as exc:
            await self.send_error(*error_fields(exc), None, event_id)

    async def _on_client_event(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind in ("session.update", "transcription_session.update"):
            settings = self.settings.updated(message.get("session") or {})
            if settings != self.settings:
                await self._end_turn(required=False)  # the new settings apply from the next audio
                self.settings = settings
                self.decoder = PcmStreamDecoder(settings.format, settings.sample_rate)
            # Beta clients get the beta name back; the session is shown in the GA shape.
            updated = f"{kind.split('.')[0]}.updated"
            await self.send([self.events.event(updated, session=self.settings.session_object())])
        elif kind == "input_audio_buffer.append":
            await self._append(message.get("audio"))
        elif kind == "input_audio_buffer.commit":
            await self._end_turn(required=True)
        elif kind == "input_audio_buffer.clear":
            if self.live is not None:
                self.live.cancel()
                self.live = None
            self.buffer.clear()
            self.buffered_samples = 0
            self.decoder = PcmStreamDecoder(self.settings.format, self.settings.sample_rate)
            await self.send([self.events.event("input_audio_buffer.cleared")])
        else:
            raise RealtimeError("unknown_event", f"voicebus serves transcription sessions: it does not take "
                                f"{str(kind)!r:.60} events", "type")

    async def _append(self, audio: Any) -> None:
        if not isinstance(audio, str):
            raise RealtimeError("invalid_value", "audio must be base64-encoded audio", "audio")
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise RealtimeError("invalid_value", "audio is not valid base64", "audio") from None
        samples = self.decoder.decode(data)
        if not self.settings.server_vad:
            limit_s = self.gateway.config.limits.max_audio_seconds
            if (self.buffered_samples + len(samples)) / STT_SAMPLE_RATE > limit_s:
                raise RealtimeError("audio_too_long", f"the buffer would pass {limit_s:g} s of audio: "
                                    "commit or clear it first", "audio")
            self.buffer.append(samples)
            self.buffered_samples += len(samples)
        else:
            if self.live is not None and self.live.gone:
                self.live.cancel()
                self.live = None
            if self.live is None:
                self.live = await LiveRun.start(self, self.samples_in)
            self.live.audio.put_nowait(samples)
        self.samples_in += len(samples)

    async def _end_turn(self, required: bool) -> None:
        """Commit: the audio so far is transcribed to the end. `required`: a client's commit,
        which is an error when there is nothing to commit."""
        tail = self.decoder.flush()
        self.decoder = PcmStreamDecoder(self.settings.format, self.settings.sample_rate)
        self.samples_in += len(tail)
        if self.settings.server_vad:
            live, self.live = self.live, None
            if live is None:
                if required:
                    raise RealtimeError("input_audio_buffer_commit_empty", "no audio since the last commit")
                return
            live.audio.put_nowait(tail)
            await live.finish()
            return
        audio = np.concatenate([*self.buffer, tail]) if self.buffer else tail
        self.buffer.clear()
        self.buffered_samples = 0
        if not len(audio):
            if required:
                raise RealtimeError("input_audio_buffer_commit_empty", "no audio since the last commit")
            return
        item = self.events.new_item()
        await self.send([self.events.committed(item)])
        message = {"action": "transcribe", "audio_data": audio.astype("<f4").tobytes(), "dtype": "float32",
                   "sample_rate": STT_SAMPLE_RATE, **self._model_fields()}
        try:
            reply = await self.gateway.bus.request("stt", message)
        except BusError as exc:
            reply = {"status": "error", "error": exc.to_wire()}
        await self.send(whole_item_events(self.events, item, reply, len(audio) / STT_SAMPLE_RATE))

    def _model_fields(self) -> dict[str, Any]:
        fields = {"language": self.settings.language,
                  "model_pref": self.gateway.names.model_pref(self.settings.model)}
        return {key: value for key, value in fields.items() if value is not None}

    def stream_fields(self) -> dict[str, Any]:
        return {"sample_rate": STT_SAMPLE_RATE, "dtype": "float32", **self._model_fields(),
                "end_silence_ms": self.settings.silence_duration_ms, "vad_threshold": self.settings.threshold}

    async def deliver(self, bus_events: list[dict[str, Any]]) -> None:
        """Bus events from either task, sent on in the stream's order."""
        async with self._send_lock:
            await self._send_unlocked(self.events.take(bus_events))

    async def send(self, events: list[dict[str, Any]]) -> None:
        async with self._send_lock:
            await self._send_unlocked(events)

    async def _send_unlocked(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            with contextlib.suppress(WebSocketDisconnect, RuntimeError):  # it left: serve() ends
                await self.websocket.send_text(json.dumps(event))

    async def send_error(self, code: str, message: str, param: str | None = None,
                         event_id: str | None = None) -> None:
        await self.send([self.events.event("error", error={
            "type": "invalid_request_error", "code": code, "message": message, "param": param,
            "event_id": event_id})])


class LiveRun:
    """One bus live stream of a connection, with its audio-sending and event-reading tasks.
    `gone` once the bus no longer has the stream (an idle close, an agent restart): the
    connection then opens a new one for the next audio."""

    def __init__(self, connection: RealtimeConnection, link: LiveLink) -> None:
        self.connection, self.link = connection, link
        self.audio: asyncio.Queue[np.ndarray | None] = asyncio.Queue()
        self.gone = False
        self._sender = asyncio.ensure_future(self._send_audio())
        self._reader = asyncio.ensure_future(self._read_events())

    @classmethod
    async def start(cls, connection: RealtimeConnection, offset_samples: int) -> LiveRun:
        connection.gateway.bus.check_ready("stt")
        link = await connection.gateway.bus.open_live(connection.stream_fields())
        connection.events.next_stream(round(offset_samples * 1000 / STT_SAMPLE_RATE))
        return cls(connection, link)

    async def _send_audio(self) -> None:
        max_samples = int(MAX_CALL_S * STT_SAMPLE_RATE)
        ending = False
        while not ending:
            pieces = [await self.audio.get()]
            gathered = 0 if pieces[0] is None else len(pieces[0])  # kept, not summed again per piece
            while pieces[-1] is not None and not self.audio.empty() and gathered < max_samples:
                pieces.append(self.audio.get_nowait())
                gathered += 0 if pieces[-1] is None else len(pieces[-1])
            ending = pieces[-1] is None
            samples = [p for p in pieces if p is not None and len(p)]
            if not samples:
                continue
            try:
                await self.connection.deliver(await self.link.send_audio(np.concatenate(samples)))
            except (BusReplyError, BusError) as exc:  # this audio was refused
                code, message = error_fields(exc)
                self.gone = self.gone or code == NOT_FOUND
                await self.connection.send_error(code, message)

    async def _read_events(self) -> None:
        while not self.link.done:
            try:
                await self.connection.deliver(await self.link.next_events(EVENT_WAIT_MS))
            except (BusReplyError, BusError) as exc:
                if not self.link.done:  # the stream went (idle, cancelled): say so once
                    self.gone = True
                    await self.connection.send_error(*error_fields(exc))
                return

    async def finish(self) -> None:
        """The audio sent so far is transcribed to the end; every event is delivered."""
        self.audio.put_nowait(None)
        try:
            await self._sender
            await self.connection.deliver(await self.link.close())
        except (BusReplyError, BusError) as exc:
            await self.connection.send_error(*error_fields(exc))
        finally:
            # A next_event still out may carry the last events (a waiting reader gets them
            # first): let it come back before the stream's sockets close.
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._reader), EVENT_WAIT_MS / 1000 + 5)
            self.cancel()

    def cancel(self) -> None:
        """Stop both tasks; a stream not yet closed is cancelled on the bus."""
        self._sender.cancel()
        self._reader.cancel()
        self.link.release()
