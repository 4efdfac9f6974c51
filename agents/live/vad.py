"""Streaming voice activity: Silero VAD (the ONNX model faster-whisper ships) frame by frame.

`StreamingVad` turns a stream's 16 kHz audio, in chunks of any size, into one speech
probability per 512-sample frame (32 ms), carrying the model's recurrent state and the
64-sample context between calls. Contract:
- the probabilities equal, frame for frame, those of faster-whisper's `SileroVADModel` run
  over the whole audio at once: chunking changes nothing;
- samples that do not fill a frame wait for the next call (`pending_samples`); `flush()`
  pads the last partial frame with zeros and returns its probability;
- one `StreamingVad` per stream, called from one thread at a time. The ONNX session is
  shared by every stream (the state lives here, not in the session); it runs with one
  thread so that the VAD of many streams never competes with Whisper for the cores.
"""

from __future__ import annotations

import functools

import numpy as np

FRAME_SAMPLES = 512  # Silero's frame at 16 kHz
CONTEXT_SAMPLES = 64  # the model sees this much of the previous frame before each frame
SAMPLE_RATE = 16_000
FRAME_SECONDS = FRAME_SAMPLES / SAMPLE_RATE
_STATE_SHAPE = (1, 1, 128)


@functools.lru_cache(maxsize=1)
def _session():  # noqa: ANN202 - onnxruntime.InferenceSession, imported lazily
    # faster_whisper.vad builds the session with one thread and no memory arena.
    from faster_whisper.vad import get_vad_model

    return get_vad_model().session


class StreamingVad:
    def __init__(self) -> None:
        self._h = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._c = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._context = np.zeros(CONTEXT_SAMPLES, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)

    @property
    def pending_samples(self) -> int:
        return len(self._pending)

    def push(self, audio: np.ndarray) -> np.ndarray:
        """Speech probabilities (float32, one per completed frame) after appending `audio`."""
        samples = np.concatenate([self._pending, np.asarray(audio, dtype=np.float32)])
        whole = len(samples) // FRAME_SAMPLES * FRAME_SAMPLES
        self._pending = samples[whole:]
        if whole == 0:
            return np.zeros(0, dtype=np.float32)
        return self._run(samples[:whole].reshape(-1, FRAME_SAMPLES))

    def flush(self) -> np.ndarray:
        """The probability of the last, zero-padded partial frame (none if there is none)."""
        if not len(self._pending):
            return np.zeros(0, dtype=np.float32)
        frame = np.zeros(FRAME_SAMPLES, dtype=np.float32)
        frame[: len(self._pending)] = self._pending
        self._pending = np.zeros(0, dtype=np.float32)
        return self._run(frame.reshape(1, FRAME_SAMPLES))

    def _run(self, frames: np.ndarray) -> np.ndarray:
        # Each row: the last CONTEXT_SAMPLES of the frame before it, then the frame; the
        # model reads the rows as a sequence, in order, through its recurrent state.
        contexts = np.concatenate([self._context[None, :], frames[:-1, -CONTEXT_SAMPLES:]])
        rows = np.ascontiguousarray(np.concatenate([contexts, frames], axis=1))
        probs, self._h, self._c = _session().run(None, {"input": rows, "h": self._h, "c": self._c})
        self._context = frames[-1, -CONTEXT_SAMPLES:].copy()
        return np.asarray(probs, dtype=np.float32).reshape(-1)
