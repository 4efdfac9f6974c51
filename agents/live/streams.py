"""The STT agent's live streams: the actions `stream_open`, `stream_audio`, `next_event`,
`stream_close` (and `cancel`) on top of `LiveSession`s.

`LiveStreams` owns no socket and runs no model; it is an adapter on the agent's stream
state machine (`agents/streams.py`): each live stream's events are the outputs of a
`Stream` (in order, bounded, read by one waiting call at a time, expiring when idle) in a
`StreamRegistry` bounded by `limits.max_open_streams`. Its `LiveHost` (the agent) sends replies,
submits decode jobs to the model manager and drops jobs; the CPU work of each chunk
(decoding, resampling, VAD) runs on an `OffThread` worker whose finished tasks the agent
hands back through `on_worker`. Every action takes `now` (monotonic seconds).

Contract:
- A stream is open from `stream_open` until its `stream_close` has been answered, it was
  cancelled, its client hung up (the connection of its last call closed, and no call came
  on another one for `hangup_grace_s`), or it received no call for `idle_timeout_s`. At
  most `max_open_streams` are open; one more is refused with `overloaded`. Calls for a
  stream that is gone say why (`not_found`).
- Every event is delivered once, to the first call that can carry it: a waiting
  `next_event`, else the next `stream_audio`, `next_event` or `stream_close` reply. Events
  carry `seq`, their place in the stream's order (0, 1, 2, ...), so that a client reading
  on two sockets can put them back in order.
  Replies carry `done: true` once the stream has ended (no more events will come).
- `stream_audio` is answered as soon as its chunk has been through the VAD, never after
  inference. Chunks longer than `max_chunk_s`, audio beyond `max_audio_seconds` in all,
  and a `dtype` or `sample_rate` other than the stream's are refused, and the stream
  carries on.
- `stream_close` is answered when every utterance's final (or error) is out, with the
  events not yet delivered. A stream that ends any other way has its decodes dropped at
  the model manager: nothing runs for nobody.
- Decodes are sent with `FINAL_PRIORITY` (finals, ahead of interactive requests) or
  `PARTIAL_PRIORITY`; a partial not answered within `partial_timeout_ms` is given up
  (the next one covers its audio).
- Partials share room fairly, and none starts while a final decode is out: the
  `PartialBudget` (agents/live/partials.py) says whose turn it is, and a stream's request
  is cut when its turn comes, so it covers its newest audio.

Its parts: `DecodeJob` and `Decoded` (agents/live/decodes.py) carry a decode to the model
manager and its answer back, typed; `PartialBudget` shares room for partials; `LiveStats`
(agents/live/stats.py) keeps the figures of `stats`.
"""

from __future__ import annotations

import functools
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from agents.live import options
from agents.live.decodes import DecodeJob, DecodeOutcome
from agents.live.partials import PartialBudget
from agents.live.session import DecodeRequest, LiveSession, Step
from agents.live.settings import LiveSettings
from agents.live.stats import LiveStats
from agents.live.vad import StreamingVad
from agents.live.worker import Finished, OffThread
from agents.sinks import ClientCall
from agents.streams import Stream, StreamFull, StreamRegistry
from model_manager.audio import decode_audio
from model_manager.errors import (
    AUDIO_TOO_LONG,
    CANCELLED,
    INVALID_AUDIO,
    INVALID_FIELD,
    MISSING_FIELD,
    NOT_FOUND,
    OVERLOADED,
    BusError,
    internal_error,
)

# The service agent imports these from here.
__all__ = ["LiveHost", "LiveStreams"]

#: How many ended streams are remembered, to tell a late caller why its stream is gone.
REMEMBERED_CLOSED = 1024


class LiveHost(Protocol):
    def send(self, call: ClientCall, reply: dict[str, Any]) -> None: ...

    def submit_decode(self, job_id: str, fields: dict[str, Any], request: dict[str, Any], priority: int,
                      timeout_ms: int, target_ms: int, on_answer: Callable[[DecodeOutcome], None]) -> None:
        """Send one transcribe job, wanted within `target_ms`; `on_answer` gets its outcome
        (a `Decoded`, or the BusError that ended it), once: the job's sink is a `DecodeReply`."""
        ...

    def drop_jobs(self, job_ids: list[str]) -> None: ...


@dataclass(frozen=True)
class Reader:
    """A next_event call waiting for events, until `until`."""

    call: ClientCall
    until: float


@dataclass(eq=False)
class LiveStream:
    outputs: Stream[None]  # the events, in order; its reader: a waiting next_event `Reader`
    sample_rate: int
    dtype: str
    fields: dict[str, Any]  # model_pref, language, task, beam_size: every decode's
    session: LiveSession
    vad: StreamingVad  # touched only on the worker thread
    owner: bytes
    lane: int  # the worker lane its chunks go through, in order
    accepted_seconds: float = 0.0  # audio accepted, VAD done or not
    closer: ClientCall | None = None  # the stream_close call, answered when every final is out
    closing: bool = False
    jobs: dict[str, int] = field(default_factory=dict)  # job_id -> decode_id
    orphaned_at: float = math.inf  # when the connection of its last call closed

    @property
    def stream_id(self) -> str:
        return self.outputs.stream_id

    @property
    def reader(self) -> Reader | None:
        return self.outputs.reader

    @reader.setter
    def reader(self, value: Reader | None) -> None:
        self.outputs.reader = value


@dataclass(frozen=True)
class Chunk:
    """A stream_audio chunk on its way through its stream's VAD, on the worker."""

    stream: LiveStream
    call: ClientCall
    arrived_at: float
    seconds: float


@dataclass(frozen=True)
class Closing:
    """A stream_close on its way through the VAD, for the speech of the audio's last frame."""

    stream: LiveStream
    call: ClientCall


@dataclass(frozen=True)
class Heard:
    """What the worker made of a chunk (or a close): its samples (float32, 16 kHz; none for
    a close) and the speech probabilities of the VAD frames they completed."""

    samples: np.ndarray
    speech_probs: np.ndarray


VadTask = Chunk | Closing


class LiveStreams:
    def __init__(self, host: LiveHost, worker: OffThread[VadTask, Heard],
                 settings: LiveSettings | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.host = host
        self.clock = clock
        self.worker = worker
        self.settings = settings or LiveSettings()
        self.registry: StreamRegistry[None] = StreamRegistry(self.settings.max_open_streams)
        self.streams: dict[str, LiveStream] = {}  # the registry's streams, as live streams
        self._ended: OrderedDict[str, str] = OrderedDict()  # stream_id -> why it ended
        self.partials: PartialBudget[LiveStream] = PartialBudget(self.settings.partial_slow_s,
                                                                 self.settings.max_partial_budget)
        self.figures = LiveStats()

    # --- actions -----------------------------------------------------------------------

    def open(self, call: ClientCall, message: dict[str, Any], request_id: str, now: float) -> None:
        opened = options.stream_open(message)
        sample_rate, dtype = opened.sample_rate, opened.dtype
        config = options.session_config(opened, self.settings.session)
        fields = options.decode_fields(message)
        outputs: Stream[None] = Stream.open(request_id, now, self.settings.idle_timeout_s,
                                            self.settings.max_buffered_events, first_alone=False)
        self.registry.add(outputs)  # overloaded beyond limits.max_open_streams; duplicate ids refused
        stream = LiveStream(outputs, sample_rate, dtype, fields, LiveSession(config), StreamingVad(),
                            call.routing_id, lane=self.figures.opened)
        self.streams[request_id] = stream
        self._ended.pop(request_id, None)
        self.figures.opened += 1
        self.host.send(call, {"status": "success", "request_id": request_id,
                              "sample_rate": sample_rate, "dtype": dtype})

    def audio(self, call: ClientCall, message: dict[str, Any], request_id: str, now: float) -> None:
        stream = self._get(request_id, call, now)
        if stream.closing:
            raise BusError(INVALID_FIELD, f"stream {request_id!r} is closing: it takes no more audio")
        for key, expected in (("sample_rate", stream.sample_rate), ("dtype", stream.dtype)):
            if message.get(key) is not None and message[key] != expected:
                raise BusError(INVALID_AUDIO, f"stream {request_id!r} was opened with {key} {expected!r}; "
                                              f"this chunk says {message[key]!r:.50}")
        if message.get("audio_data") is None:
            raise BusError(MISSING_FIELD, "audio_data is required")
        seconds = options.chunk_seconds(message["audio_data"], stream.sample_rate, stream.dtype)
        if seconds > self.settings.max_chunk_s:
            raise BusError(AUDIO_TOO_LONG, f"a stream_audio chunk holds {seconds:.1f} s of audio; "
                                           f"the limit is {self.settings.max_chunk_s:g} s per chunk")
        if stream.accepted_seconds + seconds > self.settings.max_audio_seconds:
            raise BusError(AUDIO_TOO_LONG, f"stream {request_id!r} would exceed "
                                           f"{self.settings.max_audio_seconds:g} s of audio "
                                           "(limits.max_audio_seconds); close it and open another")
        stream.accepted_seconds += seconds
        fields = {"audio_data": message["audio_data"], "sample_rate": stream.sample_rate,
                  "dtype": stream.dtype}
        vad = stream.vad

        def work() -> Heard:
            samples = decode_audio(fields, math.inf)
            return Heard(samples, vad.push(samples))

        self.worker.submit(Chunk(stream, call, now, seconds), work, stream.lane)

    def next_event(self, call: ClientCall, message: dict[str, Any], request_id: str, now: float) -> None:
        stream = self._get(request_id, call, now)
        if stream.reader is not None:
            raise BusError(INVALID_FIELD, f"a next_event call for stream {request_id!r} is already waiting")
        wait_ms = options.wait_ms(message, self.settings.max_wait_ms)
        if stream.outputs.in_progress() or wait_ms == 0:
            self._reply_events(stream, call)
            return
        stream.reader = Reader(call, now + wait_ms / 1000.0)

    def close(self, call: ClientCall, request_id: str, now: float) -> None:
        stream = self._get(request_id, call, now)
        if stream.closing:
            raise BusError(INVALID_FIELD, f"stream {request_id!r} is already closing")
        stream.closing, stream.closer = True, call
        vad = stream.vad

        def work() -> Heard:
            return Heard(np.zeros(0, dtype=np.float32), vad.flush())

        self.worker.submit(Closing(stream, call), work, stream.lane)

    def cancel(self, call: ClientCall, request_id: str) -> bool:
        """Cancel the live stream `request_id`; False when there is none."""
        stream = self.streams.get(request_id)
        if stream is None:
            return False
        self._end(stream, "cancelled", BusError(CANCELLED, "cancelled by its client"))
        self.host.send(call, {"status": "success", "request_id": request_id, "cancelled": True})
        return True

    # --- the agent's loop --------------------------------------------------------------

    def on_worker(self, finished: list[Finished[VadTask, Heard]], now: float) -> None:
        """Chunks through the VAD (and closes) from `OffThread.drain`, in order."""
        for done in finished:
            task, outcome = done.ticket, done.outcome
            stream = task.stream
            if self.streams.get(stream.stream_id) is not stream:
                self.host.send(task.call, _error_reply(self._gone_error(stream.stream_id), stream.stream_id))
            elif isinstance(outcome, Exception):  # refused: the stream carries on without it
                if isinstance(task, Chunk):
                    stream.accepted_seconds -= task.seconds
                else:
                    stream.closing, stream.closer = False, None
                error = outcome if isinstance(outcome, BusError) else internal_error(outcome)
                self.host.send(task.call, _error_reply(error, stream.stream_id))
            elif isinstance(task, Chunk):
                self._apply(stream, stream.session.push(outcome.samples, outcome.speech_probs,
                                                        task.arrived_at), now)
                self._reply_events(stream, task.call)
            else:
                self._apply(stream, stream.session.close(now, outcome.speech_probs), now)
                self._finish_if_done(stream)

    def tick(self, now: float) -> None:
        """Answer next_event calls whose wait is over; end idle and hung-up streams."""
        for stream in list(self.streams.values()):
            if stream.reader is not None and stream.reader.until <= now:
                self._reply_events(stream, stream.reader.call)
            if stream.closing:  # its finals are on the way; stream_close is answered with them
                stream.outputs.idle_deadline = now + self.settings.idle_timeout_s
                continue
            if stream.orphaned_at + self.settings.hangup_grace_s <= now:
                self._end(stream, "hangup", None)
        for outputs in self.registry.expired(now):
            self._end(self.streams[outputs.stream_id], "idle", None)

    def client_gone(self, routing_id: bytes, now: float) -> None:
        for stream in self.streams.values():
            if stream.owner == routing_id:
                stream.orphaned_at = min(stream.orphaned_at, now)
                if stream.reader is not None and stream.reader.call.routing_id == routing_id:
                    stream.reader = None

    def waiting_clients(self) -> bool:
        return any(s.reader is not None or s.closer is not None for s in self.streams.values())

    def stop(self, error: BusError) -> None:
        """The agent shuts down: every stream ends, its waiting calls get `error`."""
        for stream in list(self.streams.values()):
            self._end(stream, "shutdown", error)

    def stats(self) -> dict[str, Any]:
        return self.figures.report((s.session for s in self.streams.values()), self.partials.budget)

    # --- decodes -----------------------------------------------------------------------

    def _apply(self, stream: LiveStream, step: Step, now: float) -> None:
        for event in step.events:
            try:
                stream.outputs.push(event.to_wire())
            except StreamFull:
                unread = BusError(OVERLOADED, "too many unread events; the stream was ended")
                self._end(stream, "unread", unread)
                return
            self.figures.event_sent(event)
        self._drop(stream, [job for job, decode_id in stream.jobs.items() if decode_id in step.cancelled])
        for decode in step.decodes:
            self._submit(stream, decode, now)
        if stream.session.wants_partial:
            self.partials.want(stream)
        self._pump_partials(now)
        if stream.reader is not None and stream.outputs.in_progress():
            self._reply_events(stream, stream.reader.call)

    def _pump_partials(self, now: float) -> None:
        while (stream := self.partials.next_turn()) is not None:
            decode = stream.session.start_partial()
            if decode is not None:
                self._submit(stream, decode, now)

    def _submit(self, stream: LiveStream, decode: DecodeRequest, now: float) -> None:
        job = DecodeJob.of(decode, stream.fields, self.settings)
        stream.jobs[job.job_id] = job.decode_id
        self.partials.sent(job.job_id, job.final, now)
        self.figures.decode_sent(job.final)
        self.host.submit_decode(job.job_id, stream.fields, job.request, job.priority, job.timeout_ms,
                                job.target_ms, functools.partial(self._on_decoded, stream, job))

    def _on_decoded(self, stream: LiveStream, job: DecodeJob, outcome: DecodeOutcome) -> None:
        if stream.jobs.pop(job.job_id, None) is None:
            return  # dropped: not wanted any more
        now = self.clock()
        self.partials.answered(job.job_id, now)
        if self.streams.get(stream.stream_id) is not stream:
            return  # the stream has ended
        if isinstance(outcome, BusError):
            step = stream.session.failed(job.decode_id, outcome.code, outcome.message, now)
        else:
            self.figures.decode_answered(outcome.batch_size)
            step = stream.session.decoded(job.decode_id, outcome.text, now)
        self._apply(stream, step, now)
        self._finish_if_done(stream)

    def _drop(self, stream: LiveStream, job_ids: list[str]) -> None:
        if not job_ids:
            return
        for job_id in job_ids:
            del stream.jobs[job_id]
            self.partials.dropped(job_id)
        self.host.drop_jobs(job_ids)

    # --- replies and endings -----------------------------------------------------------

    def _get(self, request_id: str, call: ClientCall, now: float) -> LiveStream:
        stream = self.streams.get(request_id)
        if stream is None:
            raise self._gone_error(request_id)
        # Any call keeps it alive, and makes its connection the one whose hang-up ends it.
        stream.outputs.idle_deadline = now + self.settings.idle_timeout_s
        stream.owner, stream.orphaned_at = call.routing_id, math.inf
        return stream

    def _gone_error(self, request_id: str) -> BusError:
        reason = self._ended.get(request_id)
        if reason is None:
            return BusError(NOT_FOUND, f"no live stream {request_id!r}: open one with stream_open")
        return BusError(NOT_FOUND, f"live stream {request_id!r} has ended ({reason})")

    def _reply_events(self, stream: LiveStream, call: ClientCall, done: bool = False) -> None:
        if stream.reader is not None and stream.reader.call is call:
            stream.reader = None
        events = []
        # The outputs' index is the event's place in the stream's order: `seq` on the wire.
        while (taken := stream.outputs.take(self.clock())) is not None:
            events.append({**taken.output, "seq": taken.index})
        done = done or self.streams.get(stream.stream_id) is not stream
        reply = {"status": "success", "request_id": stream.stream_id, "events": events, "done": done}
        self.host.send(call, reply)

    def _finish_if_done(self, stream: LiveStream) -> None:
        open_here = self.streams.get(stream.stream_id) is stream
        if stream.closer is None or not stream.session.done or not open_here:
            return
        closer, stream.closer = stream.closer, None
        self._forget(stream, "stream_close")
        self._reply_events(stream, closer, done=True)
        if stream.reader is not None:
            self._reply_events(stream, stream.reader.call, done=True)

    def _end(self, stream: LiveStream, reason: str, error: BusError | None) -> None:
        """End a stream that was not closed by stream_close: its decodes are dropped."""
        self._forget(stream, reason)
        self._drop(stream, list(stream.jobs))
        self._pump_partials(self.clock())
        for call in (stream.reader.call if stream.reader else None, stream.closer):
            if call is not None and error is not None:
                self.host.send(call, _error_reply(error, stream.stream_id))
        stream.reader, stream.closer = None, None

    def _forget(self, stream: LiveStream, reason: str) -> None:
        del self.streams[stream.stream_id]
        self.registry.close(stream.stream_id)
        self.partials.withdraw(stream)
        self.figures.ended(reason, stream.session)
        why = {"stream_close": "closed by stream_close", "hangup": "its client hung up",
               "idle": f"idle for {self.settings.idle_timeout_s:g} s"}.get(reason, reason)
        self._ended[stream.stream_id] = why
        while len(self._ended) > REMEMBERED_CLOSED:
            self._ended.popitem(last=False)


def _error_reply(error: BusError, request_id: str) -> dict[str, Any]:
    return {"status": "error", "request_id": request_id, "error": error.to_wire()}
