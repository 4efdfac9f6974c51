"""Audio in and out of the gateway, with PyAV (FFmpeg): uploads in any format FFmpeg reads
become 16 kHz mono float32 samples for Whisper, and Kokoro's 24 kHz float32 samples become
mp3, opus, aac, flac, wav or pcm (24 kHz 16-bit little-endian, as OpenAI's): a whole file whose
header states its length, or a stream encoded piece by piece so that its first bytes leave
before its last sentence is synthesised."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import BinaryIO

import av
import numpy as np

from model_manager.errors import AUDIO_TOO_LONG, INVALID_AUDIO, BusError

STT_SAMPLE_RATE = 16000


@dataclass(frozen=True)
class OutputFormat:
    container: str
    codec: str
    media_type: str


#: OpenAI's response_format values (and seed 001's wav/pcm).
OUTPUT_FORMATS: dict[str, OutputFormat] = {
    "mp3": OutputFormat("mp3", "libmp3lame", "audio/mpeg"),
    "opus": OutputFormat("ogg", "libopus", "audio/ogg"),
    "aac": OutputFormat("adts", "aac", "audio/aac"),
    "flac": OutputFormat("flac", "flac", "audio/flac"),
    "wav": OutputFormat("wav", "pcm_s16le", "audio/wav"),
    "pcm": OutputFormat("s16le", "pcm_s16le", "audio/pcm"),
}


def decode_upload(source: BinaryIO, max_seconds: float) -> np.ndarray:
    """The first audio stream of `source` as float32 mono samples at 16 kHz. BusError
    INVALID_AUDIO when FFmpeg cannot read it, it has no audio or no samples; AUDIO_TOO_LONG as
    soon as more than `max_seconds` are decoded (the rest is never decoded)."""
    limit = int(max_seconds * STT_SAMPLE_RATE)
    pieces: list[np.ndarray] = []
    total = 0
    try:
        with av.open(source, mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise BusError(INVALID_AUDIO, "the file has no audio stream")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=STT_SAMPLE_RATE)
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    pieces.append(out.to_ndarray().reshape(-1))
                    total += pieces[-1].size
                if total > limit:
                    raise BusError(AUDIO_TOO_LONG, f"the audio is longer than {max_seconds:g} s")
            pieces += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    except av.FFmpegError as exc:
        raise BusError(INVALID_AUDIO, f"cannot decode the file as audio: {exc}") from None
    audio = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    if audio.size == 0:
        raise BusError(INVALID_AUDIO, "the file holds no audio samples")
    if audio.size > limit:
        raise BusError(AUDIO_TOO_LONG, f"the audio is longer than {max_seconds:g} s")
    return np.ascontiguousarray(audio, dtype=np.float32)


class _Sink:
    """A write-only, unseekable file for PyAV: what the muxer wrote since the last `take`."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


def _frame(samples: np.ndarray, sample_rate: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(samples, dtype=np.float32).reshape(1, -1), format="flt", layout="mono")
    frame.sample_rate = sample_rate
    return frame


class SpeechEncoder:
    """Encodes float32 mono samples into one `OUTPUT_FORMATS` stream, piece by piece:
    `encode` returns the bytes ready so far, `finish` the rest. The output is unseekable, so a
    streamed wav or flac says "length unknown" in its header (as OpenAI's does): a file that
    must state its length comes from `encode_speech`."""

    def __init__(self, response_format: str, sample_rate: int) -> None:
        spec = OUTPUT_FORMATS[response_format]
        self.media_type = spec.media_type
        self.sample_rate = sample_rate
        self._sink = _Sink()
        self._container = av.open(self._sink, mode="w", format=spec.container)
        self._stream = self._container.add_stream(spec.codec, rate=sample_rate, layout="mono")
        self._closed = False

    def encode(self, samples: np.ndarray) -> bytes:
        if samples.size:
            for packet in self._stream.encode(_frame(samples, self.sample_rate)):
                self._container.mux(packet)
        return self._sink.take()

    def finish(self) -> bytes:
        if not self._closed:
            self._closed = True
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._container.close()
        return self._sink.take()

    def close(self) -> None:
        """Release the encoder without finishing the stream (a client that left)."""
        if not self._closed:
            self._closed = True
            self._container.close()


def encode_speech(samples: np.ndarray, response_format: str, sample_rate: int) -> bytes:
    """A whole file in one call, written to a seekable buffer so that the muxer goes back to
    the header at the end: a wav's sizes, a flac's sample count (libsndfile cannot read a flac
    without it) and an mp3's Xing/LAME frame count and encoder delay are the real ones."""
    spec = OUTPUT_FORMATS[response_format]
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=spec.container) as container:
        stream = container.add_stream(spec.codec, rate=sample_rate, layout="mono")
        packets = stream.encode(_frame(samples, sample_rate)) if samples.size else []
        for packet in [*packets, *stream.encode(None)]:
            container.mux(packet)
    return buffer.getvalue()


def float32_samples(payload: bytes) -> np.ndarray:
    """The bus's `pcm` TTS payload: raw little-endian float32 samples."""
    return np.frombuffer(payload, dtype="<f4")


#: Raw audio formats of OpenAI's realtime API -> (FFmpeg codec, bytes per sample).
PCM_CODECS: dict[str, tuple[str, int]] = {
    "audio/pcm": ("pcm_s16le", 2),
    "audio/pcmu": ("pcm_mulaw", 1),
    "audio/pcma": ("pcm_alaw", 1),
}


class PcmStreamDecoder:
    """Raw audio that arrives in pieces (`format` one of PCM_CODECS, at `sample_rate`) as 16
    kHz float32 for Whisper. The resampler keeps its state from piece to piece, so the
    pieces' edges leave no artefacts, and a piece may end in the middle of a sample (the
    odd byte waits for the next piece)."""

    def __init__(self, format: str, sample_rate: int) -> None:
        codec, self._sample_bytes = PCM_CODECS[format]
        self._codec = av.CodecContext.create(codec, "r")
        self._codec.sample_rate = sample_rate
        self._codec.layout = "mono"
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=STT_SAMPLE_RATE)
        self._odd = b""

    def decode(self, data: bytes) -> np.ndarray:
        data = self._odd + data
        whole = len(data) - len(data) % self._sample_bytes
        data, self._odd = data[:whole], data[whole:]
        if not data:
            return np.zeros(0, np.float32)
        frames = self._codec.decode(av.Packet(data))
        return self._samples([out for frame in frames for out in self._resampler.resample(frame)])

    def flush(self) -> np.ndarray:
        """What the resampler still holds, at the end of the audio."""
        return self._samples(self._resampler.resample(None))

    @staticmethod
    def _samples(frames: list[av.AudioFrame]) -> np.ndarray:
        if not frames:
            return np.zeros(0, np.float32)
        return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.float32, copy=False)
