"""Endpointing: where utterances start and end, from per-frame speech probabilities.

`Endpointer` is a pure state machine over Silero VAD's frames (512 samples at 16 kHz,
32 ms each; `agents/live/vad.py` makes the probabilities). It holds no audio and reads no
clock: time is the frame count of the stream's audio, in seconds. Contract:
- `push(probs)` consumes the next frames' probabilities and returns, in order, what they
  decided: `SpeechStarted` once speech has lasted `min_speech_s` (shorter bursts, a cough
  or a click, never start an utterance), and `SpeechEnded` once it has been followed by
  `min_silence_s` of silence. Between a `SpeechStarted` and its `SpeechEnded` an
  utterance is open; utterances never overlap and come in order.
- Times are padded by `speech_pad_s` on each side (Whisper hears the onset and the tail
  of the first and last words), never earlier than the previous utterance's end nor later
  than the audio seen so far.
- No utterance lasts longer than `max_utterance_s`: a longer one is cut in the middle of
  its last pause of at least `min_pause_s` (or, with no such pause, at once), with
  `cut=True`; the next utterance starts where it was cut, so no audio is lost between them.
- `flush(end_s)` at the end of the stream closes an open utterance at the end of its
  speech (padded), at most `end_s`.

A frame is speech when its probability is at least `threshold`, silence when below
`neg_threshold` (default `threshold - 0.15`, as Silero's own `get_speech_timestamps`);
frames in between continue whatever state they are in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from agents.live.vad import FRAME_SECONDS


@dataclass(frozen=True)
class EndpointConfig:
    threshold: float = 0.5
    neg_threshold: float | None = None
    min_speech_s: float = 0.25
    min_silence_s: float = 0.5
    speech_pad_s: float = 0.2
    max_utterance_s: float = 15.0
    min_pause_s: float = 0.1
    frame_s: float = FRAME_SECONDS

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must lie in (0, 1), got {self.threshold}")
        if self.neg_threshold is not None and not 0.0 <= self.neg_threshold <= self.threshold:
            raise ValueError(f"neg_threshold must lie in [0, threshold], got {self.neg_threshold}")
        if min(self.min_speech_s, self.min_silence_s, self.speech_pad_s, self.min_pause_s) < 0:
            raise ValueError("durations must not be negative")
        if self.max_utterance_s < 4 * self.frame_s + 2 * self.speech_pad_s:
            raise ValueError(f"max_utterance_s is too short: {self.max_utterance_s}")

    @property
    def silence_threshold(self) -> float:
        return self.neg_threshold if self.neg_threshold is not None else max(self.threshold - 0.15, 0.01)


@dataclass(frozen=True)
class SpeechStarted:
    start_s: float


@dataclass(frozen=True)
class SpeechEnded:
    start_s: float
    end_s: float
    cut: bool = False  # ended by max_utterance_s, not by silence


EndpointEvent = SpeechStarted | SpeechEnded


class Endpointer:
    def __init__(self, config: EndpointConfig | None = None) -> None:
        self.config = config or EndpointConfig()
        self._frames = 0  # frames consumed
        self._previous_end_s = 0.0
        # Idle: the first frame of a run of speech that may become an utterance.
        self._candidate: int | None = None
        # Open: the utterance's (padded) start, its current silence, and its last pause.
        self._start_s: float | None = None
        self._silence_from: int | None = None
        self._last_pause: tuple[int, int] | None = None  # (first silent frame, first speech frame after)

    @property
    def in_speech(self) -> bool:
        return self._start_s is not None

    @property
    def now_s(self) -> float:
        return self._frames * self.config.frame_s

    def earliest_needed_s(self) -> float:
        """Audio before this time can no longer belong to any utterance."""
        c = self.config
        if self._start_s is not None:
            return self._start_s
        first = self._candidate if self._candidate is not None else self._frames
        return max(self._previous_end_s, first * c.frame_s - c.speech_pad_s)

    def push(self, probs: Iterable[float]) -> list[EndpointEvent]:
        events: list[EndpointEvent] = []
        for p in probs:
            self._step(float(p), events)
        return events

    def flush(self, end_s: float) -> list[EndpointEvent]:
        """The stream ended at `end_s`: close the open utterance, if any."""
        self._candidate = None
        if self._start_s is None:
            return []
        f = self.config.frame_s
        speech_end = self._silence_from * f if self._silence_from is not None else end_s
        return [self._end(min(end_s, speech_end + self.config.speech_pad_s))]

    # --- the state machine ---------------------------------------------------------------

    def _step(self, p: float, events: list[EndpointEvent]) -> None:
        c = self.config
        i = self._frames
        self._frames += 1
        speech, silence = p >= c.threshold, p < c.silence_threshold
        if self._start_s is None:
            if self._candidate is None:
                if speech:
                    self._candidate = i
            elif silence:
                self._candidate = None
            if self._candidate is not None and (i + 1 - self._candidate) * c.frame_s >= c.min_speech_s - 1e-9:
                self._start_s = max(self._previous_end_s, self._candidate * c.frame_s - c.speech_pad_s)
                self._candidate, self._silence_from, self._last_pause = None, None, None
                events.append(SpeechStarted(self._start_s))
            return
        if speech:
            if self._silence_from is not None and (i - self._silence_from) * c.frame_s >= c.min_pause_s:
                self._last_pause = (self._silence_from, i)
            self._silence_from = None
        elif silence and self._silence_from is None:
            self._silence_from = i
        if self._silence_from is not None and (i + 1 - self._silence_from) * c.frame_s >= c.min_silence_s:
            events.append(self._end(min(self.now_s, self._silence_from * c.frame_s + c.speech_pad_s)))
            return
        if self.now_s - self._start_s >= c.max_utterance_s - 1e-9:
            self._cut(i, events)

    def _cut(self, i: int, events: list[EndpointEvent]) -> None:
        c = self.config
        if self._silence_from is not None and (i + 1 - self._silence_from) * c.frame_s >= c.min_pause_s:
            # In a pause already: end here, as silence would have a little later.
            pause_from = self._silence_from * c.frame_s
            end_s = pause_from + min(c.speech_pad_s, (self.now_s - pause_from) / 2)
            events.append(self._end(end_s, cut=True))
            return
        if self._last_pause is not None:
            cut_s = (self._last_pause[0] + self._last_pause[1]) / 2 * c.frame_s
        else:
            cut_s = self.now_s
        events.append(self._end(cut_s, cut=True))
        # The speech goes on: the next utterance starts at the cut, with nothing lost between.
        self._start_s = cut_s
        self._silence_from, self._last_pause = None, None
        events.append(SpeechStarted(cut_s))

    def _end(self, end_s: float, cut: bool = False) -> SpeechEnded:
        assert self._start_s is not None
        ended = SpeechEnded(self._start_s, max(end_s, self._start_s), cut)
        self._previous_end_s = ended.end_s
        self._start_s, self._silence_from, self._last_pause = None, None, None
        return ended
