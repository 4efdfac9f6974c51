"""One live speech-to-text stream: its audio, its utterances, its decodes and its events.

`LiveSession` is pure: no sockets, threads, models or clocks. The caller feeds it audio
with the speech probabilities of its VAD frames (`agents/live/vad.py`) and the monotonic
time the audio arrived, sends the `DecodeRequest`s it returns as ordinary transcribe jobs,
and hands their answers back. Every call returns a `Step`: the events now ready for the
client, the decodes to send, and the decodes whose answers are no longer wanted (drop them
if they have not run).

Contract:
- Utterances come from the `Endpointer`: each one's events are `speech_started`, then
  `partial`s, `speech_ended`, and exactly one `final` (or one `error`, when its final
  decode failed). Audio without speech is never decoded.
- While an utterance is open, a partial decode of its audio so far falls due whenever
  `decode_interval_s` more of it has arrived; `wants_partial` then says so, and the caller
  takes the request with `start_partial()` when it has room for it (the agent shares
  room for partials fairly among its streams). The request is cut then, so it covers all
  the audio so far: latest wins. A stream has at most one partial decode in flight; one
  that falls due while another is in flight or still waiting for room is skipped
  (`skipped_decodes` counts them), and one is wanted again as soon as the answer comes.
- Partials follow LocalAgreement-2 (`agents/live/agreement.py`): their committed words
  never change within the utterance, and the final keeps them.
- A decode's audio reaches `decode_pad_s` past the utterance's speech (as far as the audio
  and the neighbouring utterances allow). It also hears the stream's previous utterances,
  when their finals are out and the whole span fits in `context_s`: Whisper transcribes a
  short utterance better with the speech before it. Their final words are then cut from
  the decode's answer, so a decode's words are always its own utterance's. A final decode
  with context whose own words are none (Whisper stopped after the context it re-heard),
  cannot be told from the context's (no prefix of the answer reads like the context), or
  repeat themselves (a decoder loop: `agreement.repeats_itself`) is sent again without
  context (`finals_retried_alone` counts them). A partial decode that loops or loses the
  context so is set aside (`partials_set_aside` counts them): it neither commits words nor
  becomes the final.
- When an utterance ends, its final comes from the newest partial decode that holds all
  its speech and `decode_pad_s` after it, answered (the final is then ready at once) or
  in flight (its answer becomes the final); only when there is none is a final decode
  sent, at once, and a partial decode still in flight for the utterance dropped.
- Finals (and errors) go out in utterance order, once each, and
  are never revised; a partial of a later utterance waits for the earlier ones' finals
  (a stale partial is replaced, not queued).
- `close()` ends the open utterance at the end of the audio; the session is `done` once
  every final is out. Audio after `close()` is refused (ValueError).
- The audio kept (a `StreamAudio`, agents/live/audio.py) is bounded: from the open
  utterance's start (at most `EndpointConfig.max_utterance_s` plus padding) or, between
  utterances, the padding and minimum speech that a new utterance may reach back to; and
  `context_s` before the end of the audio, for the context of the next decodes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace

import numpy as np

from agents.live.agreement import LocalAgreement, cut_context, repeats_itself
from agents.live.audio import StreamAudio
from agents.live.endpointing import EndpointConfig, Endpointer, SpeechEnded, SpeechStarted

SPEECH_STARTED, SPEECH_ENDED = "speech_started", "speech_ended"
PARTIAL, FINAL, ERROR = "partial", "final", "error"


@dataclass(frozen=True)
class LiveConfig:
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
    #: A partial decode is due each time this much more of the open utterance has arrived.
    decode_interval_s: float = 0.5
    #: No partial decode of an utterance shorter than this.
    min_partial_audio_s: float = 0.5
    #: Decodes reach this far past the utterance's speech, so Whisper hears the last word's
    #: tail; a partial decode that holds this much after the speech is the utterance's final.
    #: Finals' WER against 0.2 s: scripts/live_wer.py --configs context_s=0,context_s=0:decode_pad_s=0.2
    decode_pad_s: float = 0.5
    #: Decodes hear the previous utterances whose finals are out while the span from the
    #: oldest of them to the decode's end stays within this many seconds (0: none). More
    #: context costs more decoding per decode. Finals' WER without it and against the clips
    #: sent whole: scripts/live_wer.py --configs default,context_s=0
    context_s: float = 10.0
    #: The last words two partial decodes agree on that are not committed yet
    #: (`agents/live/agreement.py` says why and what it measured).
    commit_hold_back_words: int = 1

    def __post_init__(self) -> None:
        if self.decode_interval_s <= 0:
            raise ValueError(f"decode_interval_s must be positive, got {self.decode_interval_s}")
        if self.decode_pad_s < 0 or self.context_s < 0 or self.commit_hold_back_words < 0:
            raise ValueError("decode_pad_s, context_s and commit_hold_back_words must not be negative")


@dataclass(frozen=True)
class DecodeRequest:
    decode_id: int
    utterance: int
    final: bool
    audio: np.ndarray  # float32, 16 kHz: the utterance's audio so far (all of it for a final)...
    start_s: float  # ...from here (the context's start when it has one)...
    end_s: float  # ...to here
    from_partial: bool = False  # a partial decode whose answer became its utterance's final
    #: The final words of the earlier utterances the audio holds: cut from the answer.
    context_words: tuple[str, ...] = ()

    def own_words(self, text: str) -> list[str] | None:
        """The words of the answer `text` that are this decode's utterance's; None when the
        answer holds no reading of the context, so they cannot be told apart."""
        words = text.split()
        return cut_context(self.context_words, words) if self.context_words else words


@dataclass(frozen=True)
class LiveEvent:
    type: str  # speech_started | partial | speech_ended | final | error
    utterance: int
    start_s: float
    end_s: float | None = None
    text: str = ""
    #: partial/final: from the arrival of the newest audio it covers (a final: the end of
    #: its speech) to the event; for the stream's latency figures.
    latency_s: float | None = None
    code: str | None = None  # error only
    message: str | None = None
    #: partial only: the words of `text` that are committed (never revised), a prefix of it.
    committed: str = ""

    def to_wire(self) -> dict[str, object]:
        wire: dict[str, object] = {
            "type": self.type,
            "utterance": self.utterance,
            "text": self.text,
            "start_s": round(self.start_s, 3),
            "end_s": None if self.end_s is None else round(self.end_s, 3),
        }
        if self.type == PARTIAL:
            wire["committed"] = self.committed
        if self.type == ERROR:
            wire["error"] = {"code": self.code, "message": self.message}
        return wire


@dataclass
class Step:
    events: list[LiveEvent] = field(default_factory=list)
    decodes: list[DecodeRequest] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)

    def extend(self, other: Step) -> None:
        self.events += other.events
        self.decodes += other.decodes
        self.cancelled += other.cancelled


@dataclass
class _Utterance:
    index: int
    start_s: float
    previous_end_s: float  # where the utterance before it ended (0: none)
    agreement: LocalAgreement
    end_s: float | None = None  # set when it ends
    due_from_s: float = 0.0  # audio end at which the last partial decode fell due
    partial_in_flight: int | None = None
    partial_wanted: bool = False  # one fell due and has not been started yet
    pending_partial: LiveEvent | None = None  # waits for the earlier utterances' finals
    last_words: list[str] | None = None  # the newest partial decode's words...
    last_words_end_s: float = 0.0  # ...and the end of the audio it held
    last_partial_text: str = ""


@dataclass(frozen=True)
class _Heard:
    """An utterance whose final is out: context for the decodes after it."""

    index: int
    start_s: float
    previous_end_s: float  # where the utterance before it ended
    words: tuple[str, ...]


class LiveSession:
    def __init__(self, config: LiveConfig | None = None) -> None:
        self.config = config or LiveConfig()
        self.endpointer = Endpointer(self.config.endpoint)
        self.audio = StreamAudio()
        self.skipped_decodes = 0
        self.finals_from_partials = 0  # finals that needed no decode of their own
        self.finals_retried_alone = 0  # final decodes with context that lost or looped on the utterance
        self.partials_set_aside = 0  # partial decodes that looped or lost the context
        self.closed = False
        self._utterances: dict[int, _Utterance] = {}  # not yet finalised, by index
        self._open: int | None = None  # the utterance being spoken
        self._next_utterance = 0
        self._next_final = 0  # the utterance whose final goes out next
        self._ready_finals: dict[int, LiveEvent] = {}  # finals answered out of order
        self._decodes: dict[int, DecodeRequest] = {}  # in flight
        self._next_decode = 0
        self._final_heard_at: dict[int, float] = {}
        self._heard: deque[_Heard] = deque()  # the latest finals, in order, without gaps
        self._last_end_s = 0.0  # where the latest ended utterance ended

    # --- state -----------------------------------------------------------------------------

    @property
    def audio_seconds(self) -> float:
        return self.audio.seconds

    @property
    def buffered_seconds(self) -> float:
        return self.audio.buffered_seconds

    @property
    def in_flight(self) -> list[int]:
        return list(self._decodes)

    @property
    def done(self) -> bool:
        """Closed, and every utterance's final (or error) is out."""
        return self.closed and not self._utterances

    # --- input -----------------------------------------------------------------------------

    def push(self, audio: np.ndarray, speech_probs: np.ndarray, now: float) -> Step:
        """Append `audio` (float32, 16 kHz) that arrived at `now`, with the probabilities of
        the VAD frames it completed."""
        if self.closed:
            raise ValueError("the stream is closed")
        self.audio.append(audio, now)
        step = self._on_endpoints(self.endpointer.push(speech_probs), now)
        open_utterance = self._open_utterance()
        if open_utterance is not None:
            self._mark_due(open_utterance)
        self._trim()
        return step

    def close(self, now: float, tail_probs: np.ndarray | None = None) -> Step:
        """The stream ends: the open utterance (if any) ends at the end of the audio."""
        if self.closed:
            return Step()
        events = self.endpointer.push(tail_probs if tail_probs is not None else [])
        events += self.endpointer.flush(self.audio_seconds)
        step = self._on_endpoints(events, now)
        self.closed = True
        return step

    def decoded(self, decode_id: int, text: str, now: float) -> Step:
        """The answer to a decode: its text."""
        request = self._decodes.pop(decode_id, None)
        if request is None:
            return Step()  # dropped (its utterance ended, or the stream closed): not wanted
        utterance = self._utterances[request.utterance]
        words = request.own_words(text)
        if request.final:
            if request.context_words and (not words or repeats_itself(words)):
                # Whisper sometimes stops after the context it re-heard, hears it as something
                # else altogether, or loops on the utterance after it: hear the utterance alone.
                self.finals_retried_alone += 1
                return Step(decodes=[self._request(utterance, final=True, end_s=request.end_s,
                                                   with_context=False)])
            return self._final_event(utterance, words or [], now)
        utterance.partial_in_flight = None
        if words is None or repeats_itself(words):
            # Two such decodes in a row would commit their words for good; the next partial
            # decode falls due soon, and the final without this one makes a decode of its own.
            self.partials_set_aside += 1
            return Step()
        if request.end_s >= utterance.last_words_end_s:
            utterance.last_words, utterance.last_words_end_s = words, request.end_s
        shown = " ".join(utterance.agreement.update(words))
        step = Step()
        if shown and shown != utterance.last_partial_text and utterance.end_s is None:
            utterance.last_partial_text = shown
            event = LiveEvent(PARTIAL, utterance.index, utterance.start_s, request.end_s, shown,
                              latency_s=now - self.audio.arrival_of(request.end_s, default=now),
                              committed=" ".join(utterance.agreement.committed))
            if utterance.index == self._next_final:
                step.events.append(event)
            else:
                utterance.pending_partial = event
        return step

    def failed(self, decode_id: int, code: str, message: str, now: float) -> Step:
        """A decode failed. A failed partial is forgotten (the next one is due soon); a
        partial that was to be the final is replaced by a final decode of its own (a
        partial has the shorter timeout); a failed final becomes its utterance's `error`
        event, in the final's place."""
        request = self._decodes.pop(decode_id, None)
        if request is None:
            return Step()
        utterance = self._utterances[request.utterance]
        if not request.final:
            utterance.partial_in_flight = None
            return Step()
        if request.from_partial:
            retry = replace(request, decode_id=self._next_decode, from_partial=False)
            self._next_decode += 1
            self._decodes[retry.decode_id] = retry
            return Step(decodes=[retry])
        self._final_heard_at.pop(request.utterance, None)
        event = LiveEvent(ERROR, utterance.index, utterance.start_s, utterance.end_s, code=code,
                          message=f"the utterance could not be transcribed: {message}")
        return self._finalise(utterance, event)

    # --- inside --------------------------------------------------------------------------

    @property
    def wants_partial(self) -> bool:
        """A partial decode is due and none is in flight: `start_partial` would make one."""
        utterance = self._open_utterance()
        return utterance is not None and utterance.partial_wanted and utterance.partial_in_flight is None

    def start_partial(self) -> DecodeRequest | None:
        """The due partial decode, of the open utterance's audio so far (None if none is due)."""
        if not self.wants_partial:
            return None
        utterance = self._open_utterance()
        assert utterance is not None
        utterance.partial_wanted, utterance.due_from_s = False, self.audio_seconds
        request = self._request(utterance, final=False, end_s=self.audio_seconds)
        utterance.partial_in_flight = request.decode_id
        return request

    def _open_utterance(self) -> _Utterance | None:
        return None if self._open is None else self._utterances[self._open]

    def _on_endpoints(self, endpoints: list[SpeechStarted | SpeechEnded], now: float) -> Step:
        step = Step()
        for endpoint in endpoints:
            if isinstance(endpoint, SpeechStarted):
                index = self._next_utterance
                self._next_utterance += 1
                agreement = LocalAgreement(self.config.commit_hold_back_words)
                self._utterances[index] = _Utterance(index, endpoint.start_s, self._last_end_s, agreement,
                                                     due_from_s=endpoint.start_s)
                self._open = index
                step.events.append(LiveEvent(SPEECH_STARTED, index, endpoint.start_s))
                continue
            utterance = self._utterances[self._open]  # type: ignore[index]  # an end follows a start
            self._open = None
            utterance.end_s = self._last_end_s = endpoint.end_s
            step.events.append(LiveEvent(SPEECH_ENDED, utterance.index, utterance.start_s, endpoint.end_s))
            utterance.pending_partial, utterance.partial_wanted = None, False
            speech_end_s = max(utterance.start_s, endpoint.end_s - self.config.endpoint.speech_pad_s)
            self._final_heard_at[utterance.index] = self.audio.arrival_of(speech_end_s, default=now)
            # A cut utterance's next one starts at the cut: its audio is not this one's.
            needed_end_s = endpoint.end_s if endpoint.cut else min(
                speech_end_s + self.config.decode_pad_s, self.audio_seconds)
            step.extend(self._final(utterance, needed_end_s, now))
        return step

    def _final(self, utterance: _Utterance, needed_end_s: float, now: float) -> Step:
        """The ended utterance's final: from a partial decode that holds all its speech
        (`needed_end_s`), else from a decode of its own."""
        step = Step()
        in_flight_id, utterance.partial_in_flight = utterance.partial_in_flight, None
        in_flight = None if in_flight_id is None else self._decodes[in_flight_id]
        if in_flight is not None and in_flight.end_s >= needed_end_s - 1e-9:
            self._decodes[in_flight.decode_id] = replace(in_flight, final=True, from_partial=True)
            self.finals_from_partials += 1
            return step
        if in_flight is not None:
            step.cancelled.append(in_flight.decode_id)
            del self._decodes[in_flight.decode_id]
        if utterance.last_words is not None and utterance.last_words_end_s >= needed_end_s - 1e-9:
            self.finals_from_partials += 1
            step.extend(self._final_event(utterance, utterance.last_words, now))
            return step
        step.decodes.append(self._request(utterance, final=True, end_s=needed_end_s))
        return step

    def _final_event(self, utterance: _Utterance, words: list[str], now: float) -> Step:
        heard_at = self._final_heard_at.pop(utterance.index, now)
        text = " ".join(utterance.agreement.finish(words))
        event = LiveEvent(FINAL, utterance.index, utterance.start_s, utterance.end_s, text,
                          latency_s=now - heard_at)
        return self._finalise(utterance, event)

    def _mark_due(self, utterance: _Utterance) -> None:
        c = self.config
        audio_end = self.audio_seconds
        if audio_end - utterance.start_s < c.min_partial_audio_s:
            return
        if audio_end - utterance.due_from_s < c.decode_interval_s - 1e-9:
            return
        utterance.due_from_s = audio_end
        if utterance.partial_in_flight is not None or utterance.partial_wanted:
            self.skipped_decodes += 1
        utterance.partial_wanted = True

    def _request(self, utterance: _Utterance, final: bool, end_s: float, with_context: bool = True
                 ) -> DecodeRequest:
        context = self._context_for(utterance, end_s) if with_context else []
        first: _Utterance | _Heard = context[0] if context else utterance
        # Pad the start as far as the utterance before the first one heard allows.
        start_s = max(first.start_s - self._extra_pad_s, first.previous_end_s, self.audio.kept_from_s)
        start_s = min(first.start_s, start_s)
        audio = self.audio.between(start_s, end_s)
        request = DecodeRequest(self._next_decode, utterance.index, final, audio, start_s, end_s,
                                context_words=tuple(w for h in context for w in h.words))
        self._next_decode += 1
        self._decodes[request.decode_id] = request
        return request

    def _context_for(self, utterance: _Utterance, end_s: float) -> list[_Heard]:
        """The utterances right before `utterance`, finals out, that fit in `context_s`."""
        if not self._heard or self._heard[-1].index != utterance.index - 1:
            return []  # the one before has no final yet (or an error): no context
        context: list[_Heard] = []
        for heard in reversed(self._heard):
            if end_s - heard.start_s > self.config.context_s:
                break
            context.insert(0, heard)
        return context

    def _finalise(self, utterance: _Utterance, event: LiveEvent) -> Step:
        """Release finals (and the partial waiting behind them) in utterance order."""
        self._ready_finals[utterance.index] = event
        step = Step()
        while self._next_final in self._ready_finals:
            released = self._ready_finals.pop(self._next_final)
            step.events.append(released)
            done = self._utterances.pop(self._next_final)
            if released.type == FINAL:
                self._heard.append(_Heard(done.index, done.start_s, done.previous_end_s,
                                          tuple(released.text.split())))
            else:  # its words are unknown: no context reaches across it
                self._heard.clear()
            self._next_final += 1
            following = self._utterances.get(self._next_final)
            if following is not None and following.pending_partial is not None:
                step.events.append(following.pending_partial)
                following.pending_partial = None
        return step

    @property
    def _extra_pad_s(self) -> float:
        """How much further back than the endpointer's padding a decode's audio starts."""
        return max(0.0, self.config.decode_pad_s - self.config.endpoint.speech_pad_s)

    def _trim(self) -> None:
        while self._heard and self.audio_seconds - self._heard[0].start_s > self.config.context_s:
            self._heard.popleft()  # too far back to be context again
        keep_from_s = self.endpointer.earliest_needed_s() - self._extra_pad_s
        # Utterances whose finals are out, or still to come, may be context for the next
        # decodes, as far back as `context_s`.
        starts = [h.start_s for h in self._heard] + [u.start_s for u in self._utterances.values()]
        if starts and self.config.context_s > 0:
            oldest_s = max(min(starts), self.audio_seconds - self.config.context_s)
            keep_from_s = min(keep_from_s, oldest_s - self._extra_pad_s)
        self.audio.keep_from(keep_from_s)
