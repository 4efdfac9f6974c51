"""The Wyoming protocol (Home Assistant's voice services) on the bus: one TCP server, run by
the gateway on `endpoints.wyoming_port`, that offers speech-to-text and text-to-speech, so
Home Assistant's Wyoming integration (and any Wyoming satellite or client) uses voicebus's
models, batched with every other client's.

- `describe` -> `info`: the STT models (with their languages) and the TTS voice packs.
- `transcribe` (optional: `name` a model, `language`), `audio-start`, `audio-chunk`s,
  `audio-stop` -> one `transcript`, from `transcribe` on the whole audio, as
  wyoming-faster-whisper answers. Audio of any rate, width and channel count is converted
  to 16 kHz 16-bit mono with the package's own converter, and goes to the bus as int16.
- `synthesize` (`voice.name` a voice pack, an OpenAI voice name or a mix) ->
  `audio-start`, one `audio-chunk` per sentence as the bus's TTS `stream` makes it (the
  first plays while the rest is synthesised), `audio-stop`; 24 kHz 16-bit mono.
- Streaming synthesis, for text that is still being written (a language model's reply):
  `synthesize-start` (the voice), `synthesize-chunk`s of text, `synthesize-stop` ->
  `audio-start`, the `audio-chunk`s of each sentence, `audio-stop`, `synthesize-stopped`.
  Each sentence goes to the bus as soon as the text that follows shows it complete, so the
  first is spoken while the rest is still being written, and sentences batch with every
  other client's. A `synthesize` of the whole text between start and stop (sent for
  servers that do not stream) is ignored.
- Anything that fails gets an `error` event (`text`, and the bus's code in `code`), never
  an empty transcript or silence; the connection stays open.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from faster_whisper.tokenizer import _LANGUAGE_CODES as WHISPER_LANGUAGES
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioChunkConverter, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import AsrModel, AsrProgram, Attribution, Describe, Info, TtsProgram, TtsVoice
from wyoming.server import AsyncEventHandler, AsyncTcpServer
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped

from agents.gateway.bus import CONTROL_TIMEOUT_S, BusReplyError, error_fields
from agents.gateway.formats import STT_SAMPLE_RATE, float32_samples
from agents.gateway.state import Gateway
from model_manager.engines.kokoro.text_split import SentenceStream
from model_manager.errors import AUDIO_TOO_LONG, BAD_REQUEST, TEXT_TOO_LONG, BusError

log = logging.getLogger("voicebus.gateway.wyoming")

VOICEBUS = Attribution(name="voicebus", url="")
WIDTH = 2  # 16-bit samples, both ways
#: Sentences of one streaming synthesis being synthesised at once, ahead of the one written.
SENTENCES_AHEAD = 4
#: What every voice pack speaks here: the Kokoro engine's G2P is American English for all.
VOICE_LANGUAGE = "en-us"


async def serve_wyoming(gateway: Gateway, host: str, port: int) -> AsyncTcpServer:
    """Start the Wyoming server (it runs until `stop()`). OSError when the port is taken."""
    server = AsyncTcpServer(host, port)
    await server.start(lambda reader, writer: WyomingHandler(gateway, reader, writer))
    log.info("Wyoming (speech-to-text and text-to-speech) on tcp://%s:%d", host, port)
    return server


class WyomingHandler(AsyncEventHandler):
    """One Wyoming connection."""

    def __init__(self, gateway: Gateway, *args: Any) -> None:
        super().__init__(*args)
        self.gateway = gateway
        self.transcribe = Transcribe()
        self.converter = AudioChunkConverter(rate=STT_SAMPLE_RATE, width=WIDTH, channels=1)
        self.audio: bytearray | None = None  # 16 kHz 16-bit mono, between audio-start and audio-stop
        self.text_stream: TextStream | None = None  # between synthesize-start and synthesize-stop

    async def handle_event(self, event: Event) -> bool:
        try:
            await self._handle(event)
        except (BusReplyError, BusError) as exc:
            code, message = error_fields(exc)
            await self.write_event(Error(text=message, code=code).event())
        return True

    async def _handle(self, event: Event) -> None:
        if Describe.is_type(event.type):
            await self.write_event((await self._info()).event())
        elif Transcribe.is_type(event.type):
            self.transcribe = Transcribe.from_event(event)
        elif AudioStart.is_type(event.type):
            self.audio = bytearray()
        elif AudioChunk.is_type(event.type):
            if self.audio is None:
                raise BusError(BAD_REQUEST, "audio-chunk before audio-start")
            chunk = self.converter.convert(AudioChunk.from_event(event))
            limit_s = self.gateway.config.limits.max_audio_seconds
            if (len(self.audio) + len(chunk.audio)) / (WIDTH * STT_SAMPLE_RATE) > limit_s:
                self.audio = None  # the rest of this audio is refused too
                raise BusError(AUDIO_TOO_LONG, f"the audio passes {limit_s:g} s (limits.max_audio_seconds)")
            self.audio += chunk.audio
        elif AudioStop.is_type(event.type):
            if self.audio is None:
                raise BusError(BAD_REQUEST, "audio-stop without audio-start (or after refused audio)")
            audio, self.audio = bytes(self.audio), None
            await self.write_event((await self._transcript(audio)).event())
            self.transcribe = Transcribe()
        elif Synthesize.is_type(event.type):
            if self.text_stream is None:  # else the whole text of the stream, for other servers
                await self._synthesize(Synthesize.from_event(event))
        elif SynthesizeStart.is_type(event.type):
            if self.text_stream is not None:
                await self.text_stream.abandon()
            voice = SynthesizeStart.from_event(event).voice
            self.text_stream = TextStream(self)
            self.text_stream.start(voice.name if voice else None)
        elif SynthesizeChunk.is_type(event.type):
            if self.text_stream is None:
                raise BusError(BAD_REQUEST, "synthesize-chunk before synthesize-start")
            self.text_stream.add(SynthesizeChunk.from_event(event).text)
        elif SynthesizeStop.is_type(event.type):
            if self.text_stream is None:
                raise BusError(BAD_REQUEST, "synthesize-stop without synthesize-start")
            text_stream, self.text_stream = self.text_stream, None
            await text_stream.finish()
            await self.write_event(SynthesizeStopped().event())

    async def disconnect(self) -> None:
        if self.text_stream is not None:
            await self.text_stream.abandon()

    async def _transcript(self, pcm16: bytes) -> Transcript:
        message: dict[str, Any] = {"action": "transcribe", "audio_data": pcm16, "dtype": "int16",
                                   "sample_rate": STT_SAMPLE_RATE}
        if self.transcribe.language:
            message["language"] = self.transcribe.language
        if self.transcribe.name:
            message["model_pref"] = self.gateway.names.model_pref(self.transcribe.name)
        self.gateway.bus.check_ready("stt")
        reply = await self.gateway.bus.call("stt", message)
        return Transcript(text=str(reply.get("text") or ""), language=reply.get("language"))

    async def _synthesize(self, synthesize: Synthesize) -> None:
        voice = synthesize.voice.name if synthesize.voice else None
        started = False
        async for chunk in self.gateway.bus.stream(self.speech_message(synthesize.text, voice)):
            await self.write_audio(chunk, started)
            started = True
        if started:
            await self.write_event(AudioStop().event())

    def speech_message(self, text: str, voice_name: str | None) -> dict[str, Any]:
        """The bus TTS `stream` message for `text` in the Wyoming voice `voice_name`."""
        message: dict[str, Any] = {"text": text, "format": "pcm"}
        voice = self.gateway.names.voice(voice_name)
        if voice:
            message["voice"] = voice
        self.gateway.bus.check_ready("tts")
        return message

    async def write_audio(self, chunk: dict[str, Any], started: bool) -> None:
        """Write one chunk of the bus's TTS audio, after an `audio-start` unless `started`.
        A chunk that failed raises BusReplyError: the audio ends with an error, never
        silence."""
        if chunk.get("status") == "error":
            raise BusReplyError(chunk.get("error") or {})
        rate = int(chunk["sample_rate"])
        if not started:
            await self.write_event(AudioStart(rate=rate, width=WIDTH, channels=1).event())
        samples = np.clip(float32_samples(chunk["audio"]), -1.0, 1.0)
        audio = (samples * 32767).astype("<i2").tobytes()
        await self.write_event(AudioChunk(rate=rate, width=WIDTH, channels=1, audio=audio).event())

    async def _info(self) -> Info:
        models = [AsrModel(name=str(spec.name), description=f"Whisper {spec.name} on voicebus",
                           attribution=VOICEBUS, installed=True, version=None,
                           languages=["en"] if str(spec.name).endswith(".en") else sorted(WHISPER_LANGUAGES))
                  for spec in self.gateway.config.models("stt")]
        voices: list[TtsVoice] = []
        if "tts" in self.gateway.bus.addresses:
            reply = await self.gateway.bus.request("tts", {"action": "voices"}, CONTROL_TIMEOUT_S)
            packs = sorted({name for names in (reply.get("voices") or {}).values() for name in names})
            voices = [TtsVoice(name=pack, description=f"Kokoro voice {pack}", attribution=VOICEBUS,
                               installed=True, version=None, languages=[VOICE_LANGUAGE])
                      for pack in packs]
        asr = AsrProgram(name="voicebus-stt", description="Whisper on the voicebus bus",
                         attribution=VOICEBUS, installed=True, version=None, models=models)
        tts = TtsProgram(name="voicebus-tts", description="Kokoro on the voicebus bus",
                         attribution=VOICEBUS, installed=True, version=None, voices=voices,
                         supports_synthesize_streaming=True)
        return Info(asr=[asr] if models else [], tts=[tts] if voices else [])


class TextStream:
    """One streaming synthesis: each sentence goes to the bus as soon as it is complete, and
    one task writes their audio in order, as one `audio-start` ... `audio-stop`.

    Up to `SENTENCES_AHEAD` sentences are synthesised while the earlier ones are written
    (and batch with every other client's); more wait their turn, so a long text cannot
    flood the bus. The whole text is held to `limits.max_text_chars`, as one TTS request's.
    A failure ends the audio with one `error` event, never silence: no audio is written
    after it, the sentences still at the bus are cancelled, and no more are sent.
    """

    def __init__(self, handler: WyomingHandler) -> None:
        self.handler = handler
        self.message: dict[str, Any] = {}  # every sentence's bus message, but for its text
        self.sentences = SentenceStream()
        #: The sentences sent to the bus, in order; None after the last.
        self.requested: asyncio.Queue[asyncio.Task[list[dict[str, Any]]] | None] = asyncio.Queue()
        self.unsent: deque[dict[str, Any]] = deque()  # bus messages waiting for room
        self.ahead = 0  # sentences sent and not written yet
        self.chars = 0  # of text received
        self.text_done = self.end_queued = self.failed = False
        self.writer = asyncio.create_task(self._write())

    def start(self, voice_name: str | None) -> None:
        """Check the voice and the bus's TTS once for all sentences; when that raises
        BusError, the rest of the stream is refused (its `error` event is the caller's)."""
        try:
            self.message = self.handler.speech_message("", voice_name)
        except BusError:
            self.failed = True
            raise

    def add(self, text: str) -> None:
        if self.failed:
            return
        self.chars += len(text)
        limit = self.handler.gateway.config.limits.max_text_chars
        if self.chars > limit:
            self.failed = True
            raise BusError(TEXT_TOO_LONG, f"the streamed text passes {limit} characters "
                                          "(limits.max_text_chars)")
        for sentence in self.sentences.add(text):
            self._queue(sentence)

    async def finish(self) -> None:
        """Send the rest of the text and wait until all its audio is written."""
        for sentence in self.sentences.finish():
            self._queue(sentence)
        self.text_done = True
        self._send_more()
        try:
            await self.writer
        except BaseException:  # the client left while its audio was written
            await self.abandon()
            raise

    async def abandon(self) -> None:
        """The client left, or started another stream: cancel what it has not heard."""
        self.failed = True
        self.writer.cancel()
        tasks = [self.writer]
        while not self.requested.empty():
            if (sentence := self.requested.get_nowait()) is not None:
                sentence.cancel()
                tasks.append(sentence)
        await asyncio.gather(*tasks, return_exceptions=True)

    def _queue(self, sentence: str) -> None:
        if not self.failed:
            self.unsent.append({**self.message, "text": sentence})
            self._send_more()

    def _send_more(self) -> None:
        if self.failed:
            self.unsent.clear()
        while self.unsent and self.ahead < SENTENCES_AHEAD:
            self.ahead += 1
            chunks = self.handler.gateway.bus.stream(self.unsent.popleft())
            self.requested.put_nowait(asyncio.create_task(_collect(chunks)))
        if self.text_done and not self.unsent and not self.end_queued:
            self.end_queued = True
            self.requested.put_nowait(None)

    async def _write(self) -> None:
        started = False
        while (sentence := await self.requested.get()) is not None:
            try:
                chunks = None if self.failed else await sentence
                if chunks is None or self.failed:  # it failed before or while this was made
                    sentence.cancel()
                    await asyncio.gather(sentence, return_exceptions=True)
                    continue
                for chunk in chunks:
                    await self.handler.write_audio(chunk, started)
                    started = True
            except (BusReplyError, BusError) as exc:
                if not self.failed:  # else its error is out already
                    self.failed = True
                    code, message = error_fields(exc)
                    await self.handler.write_event(Error(text=message, code=code).event())
            finally:
                self.ahead -= 1
                self._send_more()
        if started and not self.failed:
            await self.handler.write_event(AudioStop().event())


async def _collect(chunks: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return [chunk async for chunk in chunks]
