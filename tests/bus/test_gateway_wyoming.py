"""Wyoming (Home Assistant's voice services) against the session's real bus, with the
`wyoming` package's own client: describe, transcribe, synthesize, and errors."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from scipy.signal import resample_poly
from speech import SENTENCES, speak, word_error_rate
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
    SynthesizeVoice,
)

pytestmark = pytest.mark.slow


async def read(client: AsyncTcpClient) -> Event:
    event = await asyncio.wait_for(client.read_event(), 120)
    assert event is not None, "the server closed the connection"
    return event


async def transcribe(client: AsyncTcpClient, audio_16k: np.ndarray, rate: int, channels: int = 1) -> Event:
    audio = resample_poly(audio_16k, rate // 50, 320) if rate != 16000 else audio_16k
    pcm = np.repeat((np.clip(audio, -1, 1) * 32767).astype("<i2")[:, None], channels, axis=1).tobytes()
    await client.write_event(Transcribe(language="en").event())
    await client.write_event(AudioStart(rate=rate, width=2, channels=channels).event())
    step = 2 * channels * rate // 10  # 100 ms
    for start in range(0, len(pcm), step):
        await client.write_event(AudioChunk(rate=rate, width=2, channels=channels,
                                            audio=pcm[start:start + step]).event())
    await client.write_event(AudioStop().event())
    return await read(client)


def run(bus, scenario) -> None:
    async def connected() -> None:
        async with AsyncTcpClient("127.0.0.1", bus.wyoming_port) as client:
            await scenario(client)

    asyncio.run(connected())


def test_describe_lists_the_models_and_voices(bus):
    async def scenario(client: AsyncTcpClient) -> None:
        await client.write_event(Describe().event())
        info = Info.from_event(await read(client))
        (asr,) = info.asr
        assert "whisper-tiny.en" in [m.name for m in asr.models]
        assert next(m for m in asr.models if m.name == "whisper-tiny.en").languages == ["en"]
        (tts,) = info.tts
        voices = {v.name: v for v in tts.voices}
        assert "jf_alpha" in voices and voices["jf_alpha"].languages == ["en-us"]
        assert tts.supports_synthesize_streaming and not asr.supports_transcript_streaming

    run(bus, scenario)


def test_transcribe_at_16_khz_and_at_22_khz_stereo(bus):
    async def scenario(client: AsyncTcpClient) -> None:
        for rate, channels, sentence in ((16000, 1, SENTENCES[1]), (22050, 2, SENTENCES[2])):
            event = await transcribe(client, speak(sentence), rate, channels)
            assert Transcript.is_type(event.type), event
            text = Transcript.from_event(event).text
            assert word_error_rate(sentence, text) < 0.35, (rate, text)

    run(bus, scenario)


def test_synthesize_streams_a_chunk_per_sentence_and_it_transcribes_back(bus):
    text = f"{SENTENCES[1]} {SENTENCES[2]}"

    async def scenario(client: AsyncTcpClient) -> None:
        await client.write_event(Synthesize(text=text, voice=SynthesizeVoice(name="alloy")).event())
        start = AudioStart.from_event(await read(client))
        assert (start.rate, start.width, start.channels) == (24000, 2, 1)
        chunks = []
        while AudioChunk.is_type((event := await read(client)).type):
            chunks.append(AudioChunk.from_event(event).audio)
        assert AudioStop.is_type(event.type), event
        assert len(chunks) == 2  # one per sentence, each sent as soon as it is made
        speech = np.frombuffer(b"".join(chunks), dtype="<i2").astype(np.float32) / 32768
        heard = await transcribe(client, resample_poly(speech, 2, 3), 16000)
        assert word_error_rate(text, Transcript.from_event(heard).text) < 0.35

    run(bus, scenario)


async def audio_until(client: AsyncTcpClient, end: str) -> tuple[list[bytes], Event]:
    """The audio chunks read up to the first event that is neither a chunk nor a start."""
    chunks = []
    while True:
        event = await read(client)
        if AudioChunk.is_type(event.type):
            chunks.append(AudioChunk.from_event(event).audio)
        elif not AudioStart.is_type(event.type):
            assert event.type == end, event
            return chunks, event


def test_streaming_synthesis_speaks_a_sentence_before_the_text_is_done(bus):
    first, second = SENTENCES[1], SENTENCES[2]

    async def scenario(client: AsyncTcpClient) -> None:
        await client.write_event(SynthesizeStart(voice=SynthesizeVoice(name="alloy")).event())
        for word in f"{first} {second.split()[0]}".split():  # as a language model writes
            await client.write_event(SynthesizeChunk(text=word + " ").event())
        # The second sentence has begun, so the first is complete: its audio comes now,
        # while the rest of the text is still to be written.
        start = AudioStart.from_event(await read(client))
        assert (start.rate, start.width, start.channels) == (24000, 2, 1)
        opening = AudioChunk.from_event(await read(client)).audio
        await client.write_event(SynthesizeChunk(text=" ".join(second.split()[1:])).event())
        # Clients send the whole text too, for servers that do not stream: not spoken twice.
        await client.write_event(Synthesize(text=f"{first} {second}").event())
        await client.write_event(SynthesizeStop().event())
        rest, _ = await audio_until(client, AudioStop().event().type)
        assert len(rest) == 1  # the second sentence
        assert SynthesizeStopped.is_type((await read(client)).type)
        speech = np.frombuffer(opening + b"".join(rest), dtype="<i2").astype(np.float32) / 32768
        heard = await transcribe(client, resample_poly(speech, 2, 3), 16000)
        assert word_error_rate(f"{first} {second}", Transcript.from_event(heard).text) < 0.35

    run(bus, scenario)


def test_a_streaming_synthesis_that_fails_ends_with_an_error_and_stops(bus):
    async def scenario(client: AsyncTcpClient) -> None:
        await client.write_event(SynthesizeChunk(text="Hello.").event())
        assert Error.from_event(await read(client)).code == "bad_request"  # before synthesize-start
        await client.write_event(SynthesizeStop().event())
        assert Error.from_event(await read(client)).code == "bad_request"
        await client.write_event(SynthesizeStart(voice=SynthesizeVoice(name="no_such_voice")).event())
        await client.write_event(SynthesizeChunk(text="Hello there. How are you? Fine.").event())
        await client.write_event(SynthesizeStop().event())
        _, error = await audio_until(client, Error(text="").event().type)
        assert Error.from_event(error).code == "unknown_voice"  # once, not once per sentence
        assert SynthesizeStopped.is_type((await read(client)).type)
        # A streamed text is held to limits.max_text_chars, as one TTS request is.
        await client.write_event(SynthesizeStart().event())
        await client.write_event(SynthesizeChunk(text="Hello there. " * 1600).event())  # 20,800
        assert Error.from_event(await read(client)).code == "text_too_long"
        await client.write_event(SynthesizeChunk(text="More text.").event())  # refused too, silently
        await client.write_event(SynthesizeStop().event())
        assert SynthesizeStopped.is_type((await read(client)).type)
        await client.write_event(Describe().event())
        assert Info.is_type((await read(client)).type)

    run(bus, scenario)


def test_errors_are_error_events_and_the_connection_goes_on(bus):
    async def scenario(client: AsyncTcpClient) -> None:
        unknown = SynthesizeVoice(name="no_such_voice")
        await client.write_event(Synthesize(text="Hello.", voice=unknown).event())
        assert Error.from_event(await read(client)).code == "unknown_voice"
        await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=b"\0\0" * 1600).event())
        assert Error.from_event(await read(client)).code == "bad_request"  # no audio-start before it
        await client.write_event(Synthesize(text="").event())
        assert Error.is_type((await read(client)).type)
        silence = await transcribe(client, np.zeros(16000, np.float32), 16000)
        assert Transcript.from_event(silence).text == ""  # no speech, no words: not an error
        await client.write_event(Describe().event())
        assert Info.is_type((await read(client)).type)

    run(bus, scenario)
