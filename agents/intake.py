"""From a client frame to checked engine requests, off the agent's socket thread when big.

`prepare_frame` decodes one frame and turns the items of a work action (`transcribe`,
`synthesize`, `queue_for_batch`, `stream`, the batch actions) into engine requests with
their service's `parse_item`: audio is decoded, validated and resampled here. It is a pure
function of its arguments, so `Intake` runs it inline for small frames and, for frames over
`inline_bytes`, in a worker process: decoding a 60 MB JSON list holds the GIL for seconds,
which on a thread would still stop the socket loop, and with it the heartbeats. The answer
comes back through an inproc socket the loop polls (`wake`), then `drain` hands it over.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import queue
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from agents.options import check_protocol, echoable, required
from agents.services import Service
from model_manager import protocol
from model_manager.config import Limits
from model_manager.errors import INVALID_FIELD, TOO_MANY_ITEMS, BusError, internal_error
from model_manager.protocol import Encoding

log = logging.getLogger(__name__)

#: Frames up to this size are prepared on the socket thread: a few ms of work at most.
INLINE_FRAME_BYTES = 256 * 1024


@dataclass
class Item:
    """One item of a work action: the client's fields (less the bulky payload, which only
    the engine request needs) and its engine request, or why it was refused."""

    fields: dict[str, Any]
    request: dict[str, Any] | None = None
    error: BusError | None = None


@dataclass
class Prepared:
    message: dict[str, Any]  # the request, less its bulky payload fields
    encoding: Encoding
    items: list[Item] = field(default_factory=list)
    #: `stream`: the engine requests of its outputs, in order.
    pieces: list[dict[str, Any]] = field(default_factory=list)
    #: Why the request is refused as a whole (its request_id is still known to echo).
    error: BusError | None = None


def prepare_frame(service: Service, limits: Limits, frame: bytes) -> Prepared:
    """Decode and check one client frame. Raises BusError only for a frame that does not
    decode; a request refused as a whole comes back with `error` set."""
    message, encoding = protocol.decode_request(frame)
    # A live stream's chunk is decoded with the stream's dtype and rate (agents/live/streams.py).
    light = message if message.get("action") == "stream_audio" else _light(message, service.payload_fields)
    prepared = Prepared(light, encoding)
    try:
        _prepare_items(prepared, message, service, limits)
    except BusError as exc:
        prepared.error = exc
    except Exception as exc:  # a bug must cost one request, answered with its request_id
        log.exception("preparing a request failed")
        prepared.error = internal_error(exc)
    return prepared


def _prepare_items(prepared: Prepared, message: dict[str, Any], service: Service, limits: Limits) -> None:
    action = message.get("action")
    if action in (service.single_action, "queue_for_batch", "stream"):
        request = service.parse_item(message, limits)  # its record holds the options, protocol too
        prepared.items.append(Item(prepared.message, request))
        if action == "stream" and service.split_for_stream is not None:
            prepared.pieces = service.split_for_stream(request)
        return
    check_protocol(message)
    if action == service.batch_action:
        items = required(message, "batch_data")
        if not isinstance(items, list) or not items:
            raise BusError(INVALID_FIELD, "batch_data must be a non-empty list of items")
        if len(items) > limits.max_batch_items:
            raise BusError(TOO_MANY_ITEMS,
                           f"batch_data has {len(items)} items; the limit is {limits.max_batch_items}")
        shared = {k: message[k] for k in ("model_pref", "timeout_ms", "priority") if k in message}
        for index, raw in enumerate(items):
            fields = {**shared, **raw} if isinstance(raw, dict) else {}
            item = Item(_light(fields, service.payload_fields))
            try:
                if not isinstance(raw, dict):
                    raise BusError(INVALID_FIELD, f"batch_data[{index}] must be a map/object")
                item.request = service.parse_item(fields, limits)
            except BusError as exc:
                item.error = exc
            prepared.items.append(item)


def _light(fields: dict[str, Any], payload: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if k not in payload and k != "batch_data"}


Ready = Callable[[Any, "Prepared | BusError"], None]


class Intake:
    """Runs `prepare_frame` inline or in a worker process (see the module docstring)."""

    def __init__(self, context: zmq.Context, service: Service, limits: Limits,
                 inline_bytes: int = INLINE_FRAME_BYTES) -> None:
        self.service = service
        self.limits = limits
        self.inline_bytes = inline_bytes
        self.context = context
        self.endpoint = f"inproc://intake-{uuid.uuid4().hex}"
        self.wake = context.socket(zmq.PULL)
        self.wake.bind(self.endpoint)
        self._done: queue.Queue[tuple[Any, concurrent.futures.Future[Prepared]]] = queue.Queue()
        self._local = threading.local()
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        #: Frames being prepared in the worker process: their clients are waiting.
        self.in_progress = 0
        if service.load is not None:
            threading.Thread(target=_load, args=(service.load,), name="intake-load", daemon=True).start()

    def submit(self, call: Any, frame: bytes, ready: Ready) -> None:
        if len(frame) <= self.inline_bytes:
            ready(call, _outcome(lambda: prepare_frame(self.service, self.limits, frame)))
            return
        try:
            future = self._executor().submit(prepare_frame, self.service, self.limits, frame)
        except Exception as exc:  # a broken pool: start a fresh one for the next frame
            log.exception("the request decoder process is gone")
            self._pool = None
            ready(call, internal_error(exc, "the request could not be decoded"))
            return
        self.in_progress += 1
        future.add_done_callback(lambda f: self._finished(call, f))

    def drain(self, ready: Ready) -> None:
        """Hand over every frame prepared in the worker process (on the socket thread)."""
        while True:
            try:
                self.wake.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
        while True:
            try:
                call, future = self._done.get_nowait()
            except queue.Empty:
                return
            self.in_progress -= 1
            ready(call, _outcome(future.result))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self.wake.close(linger=0)

    def _executor(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            # spawn: a forked copy of a process with zmq threads and sockets is not safe.
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def _finished(self, call: Any, future: concurrent.futures.Future[Prepared]) -> None:
        # On the executor's thread: queue the answer, then wake the socket loop.
        self._done.put((call, future))
        push = getattr(self._local, "push", None)
        if push is None:
            push = self._local.push = self.context.socket(zmq.PUSH)
            push.setsockopt(zmq.LINGER, 0)
            push.connect(self.endpoint)
        push.send(b"", zmq.NOBLOCK)


def _load(load: Callable[[], None]) -> None:
    try:
        load()
    except Exception:  # the first request that needs it will report the failure
        log.exception("loading the request decoder's dependencies failed")


def _outcome(run: Callable[[], Prepared]) -> Prepared | BusError:
    try:
        return run()
    except BusError as exc:
        return exc
    except Exception as exc:  # a bug must cost one request, not the agent
        log.exception("preparing a request failed")
        return internal_error(exc)


__all__ = ["Intake", "Item", "Prepared", "echoable", "prepare_frame"]
