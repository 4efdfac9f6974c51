"""Speech files from the gateway open in the common readers: every `response_format` of
/v1/audio/speech and every `format` of seed 001's /tts, read back with soundfile (libsndfile,
where it reads the format) and with PyAV, last as long as the raw samples of the same
sentence. A file that is not streamed states its real length in its header."""

from __future__ import annotations

import io
import struct

import av
import httpx
import numpy as np
import openai
import pytest
import soundfile

SENTENCE = "Please call me back."
RATE = 24000  # Kokoro's, and the rate of every format but opus (48 kHz inside, as Opus always is)

#: response_format -> soundfile's name for its container, "" where libsndfile has none (aac).
SOUNDFILE_FORMATS = {"mp3": "MP3", "opus": "OGG", "aac": "", "flac": "FLAC", "wav": "WAV", "pcm": "RAW"}

#: Samples a codec may add at 24 kHz: AAC's 1024-sample priming and its last frame's padding
#: (ADTS has no field to trim them). mp3's encoder delay and padding are in its LAME header and
#: Opus's pre-skip and end trim in its granule positions, so those decode to the exact length.
PADDING = {"aac": 2 * 1024}


@pytest.fixture(scope="module")
def client(bus) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{bus.http_url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def pcm_samples(client) -> int:
    """How many samples the sentence is, from /v1/audio/speech's raw pcm (16-bit, no header)."""
    data = client.audio.speech.create(model="tts-1", voice="alloy", input=SENTENCE,
                                      response_format="pcm").content
    assert len(data) % 2 == 0 and len(data) > RATE  # more than half a second
    return len(data) // 2


def pyav_seconds(data: bytes, response_format: str) -> float:
    """The file's length as FFmpeg decodes it."""
    options = {"sample_rate": str(RATE), "ch_layout": "mono"} if response_format == "pcm" else {}
    with av.open(io.BytesIO(data), format="s16le" if response_format == "pcm" else None,
                 options=options) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return samples / stream.rate


def soundfile_seconds(data: bytes, response_format: str) -> float:
    """The file's length as libsndfile reads it: what its header (or pages) say, then the samples."""
    raw = {"samplerate": RATE, "channels": 1, "format": "RAW", "subtype": "PCM_16", "endian": "LITTLE"}
    kwargs = raw if response_format == "pcm" else {}
    info = soundfile.info(io.BytesIO(data), **kwargs) if response_format != "pcm" else None
    samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", **kwargs)
    if info is not None:
        assert info.frames == len(samples), f"the header says {info.frames} samples, not {len(samples)}"
    assert samples.ndim == 1 and np.sqrt(np.mean(samples**2)) > 0.01, "silent"
    return len(samples) / rate


def wav_sizes(data: bytes) -> tuple[int, int]:
    """(RIFF size, data chunk size) from a WAV header, walking the chunks up to `data`."""
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    riff = struct.unpack("<I", data[4:8])[0]
    offset = 12
    while data[offset:offset + 4] != b"data":
        offset += 8 + struct.unpack("<I", data[offset + 4:offset + 8])[0]
    return riff, struct.unpack("<I", data[offset + 4:offset + 8])[0]


def check_file(data: bytes, response_format: str, expected_samples: int) -> None:
    expected = expected_samples / RATE
    tolerance = (PADDING.get(response_format, 0) + 1) / RATE
    seconds = pyav_seconds(data, response_format)
    assert expected - 1 / RATE <= seconds <= expected + tolerance, (response_format, seconds, expected)
    if response_format == "wav":
        riff, size = wav_sizes(data)
        assert (riff, size) == (len(data) - 8, expected_samples * 2), "the header must state the real length"
    name = SOUNDFILE_FORMATS[response_format]
    if name and name in soundfile.available_formats():
        seconds = soundfile_seconds(data, response_format)
        assert expected - 1 / RATE <= seconds <= expected + tolerance, (response_format, seconds, expected)


@pytest.mark.parametrize("response_format", list(SOUNDFILE_FORMATS))
def test_openai_speech_is_a_whole_file_in_every_format(client, pcm_samples, response_format):
    reply = client.audio.speech.create(model="tts-1", voice="alloy", input=SENTENCE,
                                       response_format=response_format)
    assert int(reply.response.headers["content-length"]) == len(reply.content)
    check_file(reply.content, response_format, pcm_samples)


@pytest.mark.parametrize("response_format", ["wav", "pcm"])
def test_seed_tts_file_in_every_format(bus, pcm_samples, response_format):
    response = httpx.post(f"{bus.http_url}/tts", json={"text": SENTENCE, "voice": "alloy",
                                                       "format": response_format}, timeout=120)
    assert response.status_code == 200, response.text
    check_file(response.content, response_format, pcm_samples)


def test_streamed_flac_still_streams_and_decodes(client, pcm_samples):
    """With stream_format audio the bytes leave as they are encoded, so the header cannot know
    the length (FLAC's sample count is 0, "unknown"); FFmpeg still decodes every sample."""
    with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input=SENTENCE, response_format="flac",
            stream_format="audio") as reply:
        assert reply.headers.get("transfer-encoding") == "chunked"
        data = reply.read()
    assert pyav_seconds(data, "flac") == pcm_samples / RATE
