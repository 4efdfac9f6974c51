"""Load generators over any system: closed loop (N clients, each sending its next request
when the last one is answered) and open loop (Poisson arrivals at a fixed rate).

A system is reached through `Connection`s, one per client thread: `bus.BusConnection` for
voicebus, `peer.PeerConnection` for Ray Serve. The generators do not know which one they
drive, so every system is measured by the same code.

Open-loop latency is counted from each request's *scheduled* arrival, not from when a
thread got round to sending it: otherwise a saturated system would hide its queueing
(coordinated omission).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from bench.stats import latency_summary
from bench.workload import Workload

#: Open loop: requests in flight at once at most; later arrivals wait for a thread, and that
#: wait counts in their latency, so the arrival process stays open.
OPEN_LOOP_THREADS = 64

Tick = Callable[[int], None]


@dataclass(frozen=True)
class Outcome:
    """One request's end. `end` and `first` are time.perf_counter() readings: when the reply
    (the last chunk) came, and when the first audio chunk came (TTS; None otherwise).
    `audio_s`: seconds of audio the request carried (STT input, TTS output). `error`: the
    error code when it failed. `engine_s`: the engine's time for it (its prepare and the
    compute of the batch that ran it), where the system reports it (the bus's `timing`)."""

    end: float
    first: float | None = None
    audio_s: float = 0.0
    error: str | None = None
    engine_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Connection(Protocol):
    """A client's link to the system under test, used by one thread at a time."""

    def call(self, item: dict[str, Any]) -> Outcome:
        """Send `item` (an engine request of the workload) and wait for its whole answer.
        Never raises for a failed request: failures are Outcomes with an error code."""
        ...

    def close(self) -> None: ...


ConnectionFactory = Callable[[], Connection]


@dataclass(frozen=True)
class Sample:
    """A finished request: when it started counting (sent, or scheduled in open loop)."""

    start: float
    outcome: Outcome


def summarize(samples: Sequence[Sample], wall_s: float) -> dict[str, Any]:
    """Throughput, latency and error counts of one load level.

    Throughput counts successful requests only, over `wall_s` (first start to last end), so
    a system that answers fast with errors does not look fast. Latency percentiles are over
    successes too; time to first chunk is reported when any request streamed.
    """
    ok = [s for s in samples if s.outcome.ok]
    errors = Counter(s.outcome.error for s in samples if not s.outcome.ok)
    first = [s.outcome.first - s.start for s in ok if s.outcome.first is not None]
    row: dict[str, Any] = {
        "requests": len(samples),
        "succeeded": len(ok),
        "errors": dict(sorted(errors.items())),
        "wall_s": wall_s,
        "throughput_rps": len(ok) / wall_s if wall_s > 0 else None,
        "audio_s_per_s": sum(s.outcome.audio_s for s in ok) / wall_s if wall_s > 0 else None,
        **latency_summary([s.outcome.end - s.start for s in ok]),
    }
    if first:
        row.update(latency_summary(first, prefix="ttfc_"))
    return row


def closed_loop(
    connect: ConnectionFactory, workload: Workload, clients: int, requests: int, tick: Tick
) -> dict[str, Any]:
    """`clients` threads share `requests` requests (workload items 0, 1, 2, ... in order);
    each sends its next one as soon as its last is answered."""
    samples, wall = closed_loop_samples(connect, workload, clients, requests, tick)
    return {"clients": clients, **summarize(samples, wall)}


def closed_loop_samples(
    connect: ConnectionFactory, workload: Workload, clients: int, requests: int, tick: Tick
) -> tuple[list[Sample], float]:
    """`closed_loop`'s finished requests and wall time, unsummarized, so that several runs
    (rounds) can be summarized as one: throughput over the summed wall times."""
    if clients < 1 or requests < 1:
        raise ValueError(f"need clients >= 1 and requests >= 1, got {clients}, {requests}")
    counter = itertools.count()
    lock = threading.Lock()
    samples: list[Sample] = []
    # Made before the clock starts; their sockets open on first use, which on localhost
    # costs well under a millisecond against requests that take hundreds.
    connections = [connect() for _ in range(min(clients, requests))]
    crashed: list[BaseException] = []

    def client(connection: Connection) -> None:
        try:
            while True:
                with lock:
                    index = next(counter)
                if index >= requests:
                    return
                start = time.perf_counter()
                outcome = connection.call(workload.item(index))
                with lock:
                    samples.append(Sample(start, outcome))
                tick(1)
        except BaseException as exc:  # a bug in a Connection: re-raised below, never lost
            crashed.append(exc)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in connections]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for connection in connections:
        connection.close()
    if crashed:
        raise crashed[0]
    return samples, max(s.outcome.end for s in samples) - started


def open_loop(
    connect: ConnectionFactory, workload: Workload, offsets: Sequence[float], tick: Tick
) -> dict[str, Any]:
    """Send workload item i at `offsets[i]` seconds after the start (see stats.poisson_schedule),
    whether or not earlier requests were answered."""
    local = threading.local()
    opened: list[Connection] = []
    lock = threading.Lock()
    samples: list[Sample] = []

    def send(index: int, scheduled: float) -> None:
        if not hasattr(local, "connection"):
            local.connection = connect()
            with lock:
                opened.append(local.connection)
        outcome = local.connection.call(workload.item(index))
        with lock:
            samples.append(Sample(scheduled, outcome))
        tick(1)

    futures = []
    with ThreadPoolExecutor(max_workers=min(OPEN_LOOP_THREADS, max(1, len(offsets)))) as pool:
        started = time.perf_counter()
        for index, offset in enumerate(offsets):
            scheduled = started + offset
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(send, index, scheduled))
    for connection in opened:
        connection.close()
    for future in futures:
        future.result()  # a bug in a Connection surfaces here instead of vanishing
    wall = max((s.outcome.end for s in samples), default=started) - started
    offered = len(offsets) / offsets[-1] if offsets and offsets[-1] > 0 else None
    return {"offered_rps": offered, **summarize(samples, wall)}
