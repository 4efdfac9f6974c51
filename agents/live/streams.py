"""The STT agent's live streams: the actions `stream_open`, `stream_audio`, `next_event`,
`stream_close` (and `cancel`) on top of `LiveSession`s.

`LiveStreams` owns no socket and runs no model; it is an adapter on the agent's stream
state machine (`agents/streams.py`): each live stream's events are the outputs of a
`Stream` (in order, bounded, read by one waiting call at a time, expiring when idle) in a
`StreamRegistry` bounded by `limits.max_open_streams`. Its `LiveHost` (the agent) sends replies,
submits decode jobs to the model manager and drops jobs; the CPU work of each chunk
(decoding, resampling, VAD) runs on an `OffThread` worker whose finished tasks the agent
hands back through `on_worker`. Every method takes `now` (monotonic seconds).

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
- Partials share room fairly: at most `partial_budget` partial decodes are at the model
  manager at once, over all streams; streams that want one wait in turn (first come, first
  served, one place per stream), and a stream's request is cut when its turn comes, so it
  covers its newest audio. The budget adapts to the engine (additive increase,
  multiplicative decrease, as TCP's window): it halves when a partial took longer than
  `partial_slow_s` from send to answer and grows while they are quicker, so partials
  never pile up in front of finals on a slow engine, and batch widely on a fast one. While
  a final decode is at the model manager no partial starts: no final waits behind a
  partial sent after it.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from agents.live import options
from agents.live.session import FINAL, PARTIAL, DecodeRequest, LiveConfig, LiveSession, Step
from agents.live.vad import StreamingVad
from agents.live.worker import OffThread
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
from model_manager.percentiles import percentiles_ms

#: Decode priorities on the model manager's scale (lower runs first; 0 is interactive).
FINAL_PRIORITY = -1
PARTIAL_PRIORITY = 0
#: How many ended streams are remembered, to tell a late caller why its stream is gone.
REMEMBERED_CLOSED = 1024
#: The recent latencies the percentiles in `stats` are computed over.
LATENCY_WINDOW = 1000
#: `stats` name -> the `LiveSession` counter it adds up over every stream, open or ended.
SESSION_COUNTERS = {
    "decodes_skipped": "skipped_decodes",
    "finals_from_partials": "finals_from_partials",
    "finals_retried_alone": "finals_retried_alone",
    "partials_set_aside": "partials_set_aside",
}


@dataclass(frozen=True)
class LiveSettings:
    max_open_streams: int = 64
    idle_timeout_s: float = 30.0
    hangup_grace_s: float = 2.0
    max_chunk_s: float = 10.0
    max_audio_seconds: float = 600.0
    max_wait_ms: int = 30_000  # the longest a next_event call waits
    max_buffered_events: int = 10_000
    partial_timeout_ms: int = 10_000
    request_timeout_ms: int = 120_000
    #: A partial answered later than this after it was sent halves the partial budget.
    partial_slow_s: float = 1.0
    #: When a decode's answer is wanted (sent as the job's target_ms: batches are sized so
    #: that the most urgent job's answer comes by then, as the engine's measured costs predict).
    final_target_ms: int = 300
    partial_target_ms: int = 500
    max_partial_budget: int = 32
    session: LiveConfig = field(default_factory=LiveConfig)


class LiveHost(Protocol):
    def send(self, call: Any, reply: dict[str, Any]) -> None: ...

    def routing_id(self, call: Any) -> bytes: ...

    def submit_decode(self, job_id: str, fields: dict[str, Any], request: dict[str, Any], priority: int,
                      timeout_ms: int, target_ms: int, on_answer: Callable[[dict[str, Any]], None]) -> None:
        """Send one transcribe job, wanted within `target_ms`; `on_answer` gets its reply entry
        (success or error), once."""
        ...

    def drop_jobs(self, job_ids: list[str]) -> None: ...


@dataclass(eq=False)
class LiveStream:
    outputs: Stream[None]  # the events, in order; its reader: a waiting next_event call, until when
    sample_rate: int
    dtype: str
    fields: dict[str, Any]  # model_pref, language, task, beam_size: every decode's
    session: LiveSession
    vad: StreamingVad  # touched only on the worker thread
    owner: bytes
    accepted_seconds: float = 0.0  # audio accepted, VAD done or not
    closer: Any = None  # the stream_close call, answered when every final is out
    closing: bool = False
    jobs: dict[str, int] = field(default_factory=dict)  # job_id -> decode_id
    orphaned_at: float = math.inf  # when the connection of its last call closed
    waits_for_partial: bool = False  # in the queue for a partial decode's room
    lane: int = 0  # the worker lane its chunks go through, in order

    @property
    def stream_id(self) -> str:
        return self.outputs.stream_id

    @property
    def reader(self) -> tuple[Any, float] | None:
        return self.outputs.reader

    @reader.setter
    def reader(self, value: tuple[Any, float] | None) -> None:
        self.outputs.reader = value


class LiveStreams:
    def __init__(self, host: LiveHost, worker: OffThread, settings: LiveSettings | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.host = host
        self.clock = clock
        self.worker = worker
        self.settings = settings or LiveSettings()
        self.registry: StreamRegistry[None] = StreamRegistry(self.settings.max_open_streams)
        self.streams: dict[str, LiveStream] = {}  # the registry's streams, as live streams
        self._ended: OrderedDict[str, str] = OrderedDict()
        self.opened = 0
        self.ended_by: Counter[str] = Counter()
        self.events_sent: Counter[str] = Counter()
        self.decodes: Counter[str] = Counter()
        self.ended_counts: Counter[str] = Counter()  # SESSION_COUNTERS of the streams that ended
        self.decode_batch_sizes: Counter[int] = Counter()
        self.partial_budget = 2.0
        self._partial_jobs: dict[str, float] = {}  # partial decodes at the model manager: job_id -> sent at
        self._partial_queue: deque[LiveStream] = deque()
        self._final_jobs: set[str] = set()  # final decodes at the model manager
        self._last_decrease = -math.inf
        self.latency_s: dict[str, deque[float]] = {
            PARTIAL: deque(maxlen=LATENCY_WINDOW), FINAL: deque(maxlen=LATENCY_WINDOW)}

    # --- actions -----------------------------------------------------------------------

    def open(self, call: Any, message: dict[str, Any], request_id: str, now: float) -> None:
        sample_rate, dtype = options.sample_rate(message), options.dtype(message)
        config = options.session_config(message, self.settings.session)
        fields = options.decode_fields(message)
        outputs: Stream[None] = Stream.open(request_id, now, self.settings.idle_timeout_s,
                                            self.settings.max_buffered_events, first_alone=False)
        self.registry.add(outputs)  # overloaded beyond limits.max_open_streams; duplicate ids refused
        stream = LiveStream(outputs, sample_rate, dtype, fields, LiveSession(config), StreamingVad(),
                            self.host.routing_id(call), lane=self.opened)
        self.streams[request_id] = stream
        self._ended.pop(request_id, None)
        self.opened += 1
        self.host.send(call, {"status": "success", "request_id": request_id,
                              "sample_rate": sample_rate, "dtype": dtype})

    def audio(self, call: Any, message: dict[str, Any], request_id: str, now: float) -> None:
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

        def work() -> tuple[np.ndarray, np.ndarray]:
            samples = decode_audio(fields, math.inf)
            return samples, vad.push(samples)

        self.worker.submit(("audio", stream, call, now, seconds), work, stream.lane)

    def next_event(self, call: Any, message: dict[str, Any], request_id: str, now: float) -> None:
        stream = self._get(request_id, call, now)
        if stream.reader is not None:
            raise BusError(INVALID_FIELD, f"a next_event call for stream {request_id!r} is already waiting")
        wait_ms = options.wait_ms(message, self.settings.max_wait_ms)
        if stream.outputs.in_progress() or wait_ms == 0:
            self._reply_events(stream, call)
            return
        stream.reader = (call, now + wait_ms / 1000.0)

    def close(self, call: Any, request_id: str, now: float) -> None:
        stream = self._get(request_id, call, now)
        if stream.closing:
            raise BusError(INVALID_FIELD, f"stream {request_id!r} is already closing")
        stream.closing, stream.closer = True, call
        vad = stream.vad
        self.worker.submit(("close", stream, call, now, 0.0), vad.flush, stream.lane)

    def cancel(self, call: Any, request_id: str) -> bool:
        """Cancel the live stream `request_id`; False when there is none."""
        stream = self.streams.get(request_id)
        if stream is None:
            return False
        self._end(stream, "cancelled", BusError(CANCELLED, "cancelled by its client"))
        self.host.send(call, {"status": "success", "request_id": request_id, "cancelled": True})
        return True

    # --- the agent's loop --------------------------------------------------------------

    def on_worker(self, finished: list[tuple[Any, Any]], now: float) -> None:
        """Chunks through the VAD (and closes) from `OffThread.drain`, in order."""
        for (kind, stream, call, arrived_at, seconds), outcome in finished:
            if self.streams.get(stream.stream_id) is not stream:
                self.host.send(call, _error_reply(self._gone_error(stream.stream_id), stream.stream_id))
                continue
            if isinstance(outcome, Exception):
                stream.accepted_seconds -= seconds
                if kind == "close":
                    stream.closing, stream.closer = False, None
                error = outcome if isinstance(outcome, BusError) else internal_error(outcome)
                self.host.send(call, _error_reply(error, stream.stream_id))
                continue
            if kind == "audio":
                samples, probs = outcome
                self._apply(stream, stream.session.push(samples, probs, arrived_at), now)
                self._reply_events(stream, call)
            else:
                self._apply(stream, stream.session.close(now, outcome), now)
                self._finish_if_done(stream)

    def tick(self, now: float) -> None:
        """Answer next_event calls whose wait is over; end idle and hung-up streams."""
        for stream in list(self.streams.values()):
            if stream.reader is not None and stream.reader[1] <= now:
                self._reply_events(stream, stream.reader[0])
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
                if stream.reader is not None and self.host.routing_id(stream.reader[0]) == routing_id:
                    stream.reader = None

    def waiting_clients(self) -> bool:
        return any(s.reader is not None or s.closer is not None for s in self.streams.values())

    def stop(self, error: BusError) -> None:
        """The agent shuts down: every stream ends, its waiting calls get `error`."""
        for stream in list(self.streams.values()):
            self._end(stream, "shutdown", error)

    def stats(self) -> dict[str, Any]:
        sessions = [s.session for s in self.streams.values()]
        counts = {name: self.ended_counts[name] + sum(getattr(s, counter) for s in sessions)
                  for name, counter in SESSION_COUNTERS.items()}
        return {
            "open_streams": len(self.streams),
            "opened": self.opened,
            "ended_by": dict(self.ended_by),
            "events": dict(self.events_sent),
            "decodes": dict(self.decodes),
            **counts,
            "partial_budget": int(self.partial_budget),
            "decode_batch_size_histogram": {str(k): v for k, v in sorted(self.decode_batch_sizes.items())},
            "partial_latency_ms": percentiles_ms(self.latency_s[PARTIAL], decimals=1),
            "final_latency_ms": percentiles_ms(self.latency_s[FINAL], decimals=1),
        }

    # --- inside ------------------------------------------------------------------------

    def _get(self, request_id: str, call: Any, now: float) -> LiveStream:
        stream = self.streams.get(request_id)
        if stream is None:
            raise self._gone_error(request_id)
        # Any call keeps it alive, and makes its connection the one whose hang-up ends it.
        stream.outputs.idle_deadline = now + self.settings.idle_timeout_s
        stream.owner, stream.orphaned_at = self.host.routing_id(call), math.inf
        return stream

    def _gone_error(self, request_id: str) -> BusError:
        reason = self._ended.get(request_id)
        if reason is None:
            return BusError(NOT_FOUND, f"no live stream {request_id!r}: open one with stream_open")
        return BusError(NOT_FOUND, f"live stream {request_id!r} has ended ({reason})")

    def _apply(self, stream: LiveStream, step: Step, now: float) -> None:
        for event in step.events:
            try:
                stream.outputs.push(event.to_wire())
            except StreamFull:
                unread = BusError(OVERLOADED, "too many unread events; the stream was ended")
                self._end(stream, "unread", unread)
                return
            self.events_sent[event.type] += 1
            if event.latency_s is not None and event.type in self.latency_s:
                self.latency_s[event.type].append(event.latency_s)
        dropped = [job for job, decode_id in stream.jobs.items() if decode_id in step.cancelled]
        self._drop(stream, dropped)
        for decode in step.decodes:
            self._submit(stream, decode)
        if stream.session.wants_partial and not stream.waits_for_partial:
            stream.waits_for_partial = True
            self._partial_queue.append(stream)
        self._pump_partials(now)
        if stream.reader is not None and stream.outputs.in_progress():
            self._reply_events(stream, stream.reader[0])

    def _pump_partials(self, now: float) -> None:
        if self._final_jobs:
            return  # finals first: none waits behind a partial sent after it
        while self._partial_queue and len(self._partial_jobs) < int(self.partial_budget):
            stream = self._partial_queue.popleft()
            stream.waits_for_partial = False
            decode = stream.session.start_partial() if self.streams.get(stream.stream_id) is stream else None
            if decode is not None:
                self._submit(stream, decode, now)

    def _partial_answered(self, job_id: str, now: float) -> None:
        sent_at = self._partial_jobs.pop(job_id)
        if now - sent_at > self.settings.partial_slow_s:
            if sent_at >= self._last_decrease:  # one decrease per round trip, not one per answer
                self.partial_budget = max(1.0, self.partial_budget / 2)
                self._last_decrease = now
        else:
            self.partial_budget = min(float(self.settings.max_partial_budget),
                                      self.partial_budget + 1 / self.partial_budget)

    def _drop(self, stream: LiveStream, job_ids: list[str]) -> None:
        for job_id in job_ids:
            del stream.jobs[job_id]
            self._partial_jobs.pop(job_id, None)
            self._final_jobs.discard(job_id)
        self.host.drop_jobs(job_ids)

    def _submit(self, stream: LiveStream, decode: DecodeRequest, now: float = 0.0) -> None:
        kind = FINAL if decode.final else PARTIAL
        self.decodes[kind] += 1
        request = {"audio": decode.audio, **{k: v for k, v in stream.fields.items() if k != "model_pref"}}
        timeout_ms = self.settings.request_timeout_ms
        if not decode.final:
            timeout_ms = min(timeout_ms, self.settings.partial_timeout_ms)
        priority = FINAL_PRIORITY if decode.final else PARTIAL_PRIORITY
        job_id = uuid.uuid4().hex
        stream.jobs[job_id] = decode.decode_id
        if decode.final:
            self._final_jobs.add(job_id)
        else:
            self._partial_jobs[job_id] = now

        def on_answer(entry: dict[str, Any]) -> None:
            self._on_decoded(stream, job_id, decode.decode_id, entry)

        target_ms = self.settings.final_target_ms if decode.final else self.settings.partial_target_ms
        self.host.submit_decode(job_id, stream.fields, request, priority, timeout_ms, target_ms, on_answer)

    def _on_decoded(self, stream: LiveStream, job_id: str, decode_id: int, entry: dict[str, Any]) -> None:
        if stream.jobs.pop(job_id, None) is None or self.streams.get(stream.stream_id) is not stream:
            return  # dropped, or the stream has ended
        now = self.clock()
        self._final_jobs.discard(job_id)
        if job_id in self._partial_jobs:
            self._partial_answered(job_id, now)
        batch_size = (entry.get("timing") or {}).get("batch_size")
        if isinstance(batch_size, int):
            self.decode_batch_sizes[batch_size] += 1
        if entry.get("status") == "success":
            step = stream.session.decoded(decode_id, str(entry.get("text", "")), now)
        else:
            error = entry.get("error") or {}
            step = stream.session.failed(decode_id, error.get("code", "internal_error"),
                                         error.get("message", ""), now)
        self._apply(stream, step, now)
        self._finish_if_done(stream)

    def _finish_if_done(self, stream: LiveStream) -> None:
        open_here = self.streams.get(stream.stream_id) is stream
        if stream.closer is None or not stream.session.done or not open_here:
            return
        closer, stream.closer = stream.closer, None
        self._forget(stream, "closed by stream_close")
        self.ended_by["stream_close"] += 1
        self._reply_events(stream, closer, done=True)
        if stream.reader is not None:
            self._reply_events(stream, stream.reader[0], done=True)

    def _reply_events(self, stream: LiveStream, call: Any, done: bool = False) -> None:
        if stream.reader is not None and stream.reader[0] is call:
            stream.reader = None
        events = []
        # The outputs' index is the event's place in the stream's order: `seq` on the wire.
        while (taken := stream.outputs.take(self.clock())) is not None:
            index, event, _ = taken
            events.append({**event, "seq": index})
        done = done or self.streams.get(stream.stream_id) is not stream
        reply = {"status": "success", "request_id": stream.stream_id, "events": events, "done": done}
        self.host.send(call, reply)

    def _end(self, stream: LiveStream, reason: str, error: BusError | None) -> None:
        """End a stream that was not closed by stream_close: its decodes are dropped."""
        self._forget(stream, {"hangup": "its client hung up", "idle": "idle for "
                              f"{self.settings.idle_timeout_s:g} s"}.get(reason, reason))
        self.ended_by[reason] += 1
        self._drop(stream, list(stream.jobs))
        self._pump_partials(self.clock())
        for call in (stream.reader[0] if stream.reader else None, stream.closer):
            if call is not None and error is not None:
                self.host.send(call, _error_reply(error, stream.stream_id))
        stream.reader, stream.closer = None, None

    def _forget(self, stream: LiveStream, why: str) -> None:
        del self.streams[stream.stream_id]
        self.registry.close(stream.stream_id)
        for name, counter in SESSION_COUNTERS.items():
            self.ended_counts[name] += getattr(stream.session, counter)
        self._ended[stream.stream_id] = why
        while len(self._ended) > REMEMBERED_CLOSED:
            self._ended.popitem(last=False)


def _error_reply(error: BusError, request_id: str) -> dict[str, Any]:
    return {"status": "error", "request_id": request_id, "error": error.to_wire()}
