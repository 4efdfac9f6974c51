"""Long requests run as units beside short ones: the model worker driven step by step on this
thread (`run_next`) with an explicit clock, and a scripted engine whose long requests split.
Scheduling logic only; the real engines' split and join are tested with them, and the bus
end to end in test_bus_units.py."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from model_manager.batcher import BatchPolicy
from model_manager.engines.base import Engine
from model_manager.errors import INFERENCE_FAILED, OVERLOADED, SHUTTING_DOWN, TIMEOUT, BusError
from model_manager.jobs import Job, Timed
from model_manager.scheduler import ModelWorker


@dataclass(frozen=True)
class Text:
    """A stand-in engine's result: the text of a request, or of one part of it."""

    text: str

    def to_wire(self) -> dict[str, Any]:
        return {"text": self.text}


@dataclass(frozen=True)
class Part:
    """One unit of a long request: its name and place."""

    name: str
    index: int
    count: int


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class SplittingEngine(Engine):
    """Requests are (name, parts); a request of several parts splits into one `Part` each. Each
    engine call takes one second of the explicit clock; `during` runs inside a call (a request
    that arrives while the engine works); a part named in `poison` fails."""

    task = "stt"
    name = "splitting"
    num_parameters = 1
    device = "cpu"

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.calls: list[list[str]] = []
        self.during: dict[int, Callable[[], None]] = {}
        self.poison: set[str] = set()

    @staticmethod
    def label(request: Any) -> str:
        return f"{request.name}{request.index}" if isinstance(request, Part) else request[0]

    def batch_key(self, request: Any) -> Hashable:
        return "long" if isinstance(request, Part) or request[1] > 1 else "short"

    def bucket(self, request: Any) -> Hashable:
        return self.batch_key(request)

    def cost(self, request: Any) -> float:
        return 30.0 if self.batch_key(request) == "long" else 2.0

    def split(self, request: Any) -> list[Any]:
        name, parts = request
        return [request] if parts < 2 else [Part(name, i, parts) for i in range(parts)]

    def join(self, request: Any, results: Sequence[Any]) -> Text:
        return Text(" ".join(r.text for r in results))

    def run_batch(self, requests: Sequence[Any]) -> list[Text]:
        labels = [self.label(r) for r in requests]
        self.calls.append(labels)
        self.clock.now += 0.5
        if (hook := self.during.pop(len(self.calls), None)) is not None:
            hook()
        self.clock.now += 0.5
        if self.poison & set(labels):
            raise BusError(INFERENCE_FAILED, f"cannot read {sorted(self.poison & set(labels))[0]}")
        return [Text(label) for label in labels]


class Harness:
    """A worker that is never started: `run()` runs its due batches on this thread."""

    def __init__(self, unit_scheduling: bool = True, dynamic: bool = False, **policy: Any) -> None:
        self.clock = Clock()
        self.engine = SplittingEngine(self.clock)
        self.answers: dict[str, list[Any]] = {}
        settings = {"max_batch_size": 1, "min_batch_size": 1, **policy}
        batching = BatchPolicy(**settings, unit_scheduling=unit_scheduling)
        self.worker = ModelWorker(self.engine, batching, self._done, dynamic_batching=dynamic,
                                  clock=self.clock)
        self.worker.reconfigure(batching, dynamic)  # what start() does, without its threads

    def _done(self, job: Job, outcome: Any) -> None:
        self.answers.setdefault(job.job_id, []).append(outcome)

    def submit(self, name: str, parts: int = 1, deadline: float = 1e12) -> None:
        job = Job(job_id=name, model="splitting", request=(name, parts),
                  key=self.engine.batch_key((name, parts)), deadline=deadline,
                  cost=self.engine.cost((name, parts)))
        self.worker.submit(job)

    def run(self) -> list[list[str]]:
        """Run batches until the queue is empty; while nothing is due, time passes (1 ms steps)."""
        for _ in range(10_000):
            if not self.worker.run_next():
                if not self.worker.queue_depth():
                    break
                self.clock.now += 0.001
        return self.engine.calls

    def answer(self, name: str) -> Any:
        (outcome,) = self.answers[name]  # exactly one answer
        return outcome


def test_a_short_request_arriving_while_a_long_one_runs_goes_before_its_remaining_units():
    bus = Harness()
    bus.submit("L", parts=4)
    bus.engine.during[1] = lambda: bus.submit("S")  # S arrives while L's first window runs
    assert bus.run() == [["L0"], ["S"], ["L1"], ["L2"], ["L3"]]
    assert bus.answer("S").result == Text("S")
    assert bus.answer("L").result == Text("L0 L1 L2 L3")


def test_without_unit_scheduling_the_short_request_waits_for_the_whole_long_one():
    bus = Harness(unit_scheduling=False)
    bus.submit("L", parts=4)
    bus.engine.during[1] = lambda: bus.submit("S")
    assert bus.run() == [["L"], ["S"]]
    assert bus.answer("L").result == Text("L")  # run whole: the engine's own result


def test_a_long_request_keeps_its_turn_against_a_stream_of_short_ones():
    # A short request arrives during every call. Each takes its turn in order of expected
    # finish, and the long request's next unit, released when its last one ended, is next
    # once the shorts that came before that release have run: it is never starved.
    bus = Harness()
    bus.submit("L", parts=3)
    for call in range(1, 7):
        bus.engine.during[call] = lambda call=call: bus.submit(f"S{call}")
    calls = bus.run()
    order = [label for call in calls for label in call]
    assert order.index("L1") < order.index("S3") and order.index("L2") < order.index("S5")
    assert bus.answer("L").result == Text("L0 L1 L2")
    assert all(bus.answer(f"S{i}").result == Text(f"S{i}") for i in range(1, 7))


def test_long_requests_of_one_kind_take_turns_with_each_other_and_with_short_ones():
    # Measured: a unit takes 1 s alone, a short request 0.1 s. Two long requests share the
    # worker, so each unit's expected finish counts two units: a short request that arrives
    # while the first long request's unit runs goes before the second one's waiting unit.
    bus = Harness(dynamic=True, max_batch_size=1)
    for bucket, cost, seconds in (("long", 30.0, 1.0), ("short", 2.0, 0.1)):
        for _ in range(bus.worker.queue.sizes.cost().min_observations):
            bus.worker.queue.sizes.cost(bucket).observe(1, cost, seconds)

    def short_arrives() -> None:
        bus.clock.now = 0.95
        bus.submit("S")

    bus.submit("A", parts=3)  # A0 expected at 1.0 (alone then)
    bus.submit("B", parts=3)  # B0 expected at 2.0 (sharing with A)
    bus.engine.during[1] = short_arrives  # S expected at 1.05
    assert bus.run()[:3] == [["A0"], ["S"], ["B0"]]
    assert bus.answer("A").result == Text("A0 A1 A2") and bus.answer("B").result == Text("B0 B1 B2")


def test_units_of_one_request_fill_its_batches_and_join_in_order_into_one_answer():
    bus = Harness(max_batch_size=2, min_batch_size=2)
    bus.submit("L", parts=5)
    assert bus.run() == [["L0", "L1"], ["L2", "L3"], ["L4"]]
    answer = bus.answer("L")
    assert isinstance(answer, Timed) and answer.result == Text("L0 L1 L2 L3 L4")
    assert answer.timing.batch_size == 2  # the largest batch its units ran in
    stats = bus.worker.snapshot()
    assert (stats["requests"], stats["succeeded"], stats["split_requests"]) == (1, 1, 1)
    assert stats["batch_size_histogram"] == {"1": 1, "2": 2}  # batches count units


def test_cancel_stops_the_remaining_units_and_leaves_the_request_unanswered():
    bus = Harness()
    bus.submit("L", parts=4)
    bus.submit("S")
    bus.engine.during[1] = lambda: bus.worker.cancel({"L"})  # its client goes while L0 runs
    assert bus.run() == [["L0"], ["S"]]
    assert "L" not in bus.answers and bus.answer("S").result == Text("S")


def test_a_deadline_stops_the_remaining_units_with_one_timeout():
    bus = Harness()
    bus.submit("L", parts=4, deadline=1.5)  # its first unit ends at 1.0, the second at 2.0
    bus.submit("S")
    calls = bus.run()
    assert calls[:2] == [["L0"], ["S"]] and ["L2"] not in calls and ["L3"] not in calls
    error = bus.answer("L")
    assert isinstance(error, BusError) and error.code == TIMEOUT
    assert error.message.startswith("part 2 of 4 failed: request expired")


def test_a_failed_unit_fails_only_its_request_with_the_cause():
    bus = Harness()
    bus.engine.poison = {"A1"}
    bus.submit("A", parts=3)
    bus.submit("B", parts=2)
    bus.submit("S")
    calls = bus.run()
    assert ["A2"] not in calls  # nothing of A runs after it failed
    error = bus.answer("A")
    assert isinstance(error, BusError) and error.code == INFERENCE_FAILED
    assert error.message == "part 2 of 3 failed: cannot read A1"  # the cause, never a partial text
    assert bus.answer("B").result == Text("B0 B1") and bus.answer("S").result == Text("S")


def test_a_long_request_is_taken_while_the_queue_has_room_for_one_request():
    bus = Harness(max_queue_size=2, max_batch_size=4, min_batch_size=4)
    bus.submit("S")
    bus.submit("L", parts=6)  # one place left: taken, and its first four units queue at once
    with pytest.raises(BusError) as refused:
        bus.submit("T")  # queued units count like requests
    assert refused.value.code == OVERLOADED
    bus.run()
    assert bus.answer("L").result == Text("L0 L1 L2 L3 L4 L5")
    assert "T" not in bus.answers  # refused at once, never queued


def test_stop_answers_a_request_with_units_left_once():
    bus = Harness()
    bus.submit("L", parts=3)
    bus.worker.run_next()
    bus.worker.stop(1)
    error = bus.answer("L")
    assert isinstance(error, BusError) and error.code == SHUTTING_DOWN


@pytest.mark.parametrize(("seconds_by_size", "slice_size"), [
    # A CPU: a batch of four pays 18% over one, but takes 3.4 times as long: one unit a batch.
    ({1: 1.0, 2: 1.8, 4: 3.4}, 1),
    # A GPU: batching is nearly free; the whole batch.
    ({1: 1.0, 2: 1.1, 4: 1.3}, 4),
])
def test_while_short_requests_are_about_units_batch_only_as_far_as_it_holds_them_back_little(
        seconds_by_size, slice_size):
    bus = Harness(dynamic=True, max_batch_size=4, min_batch_size=4)
    long_cost = bus.worker.queue.sizes.cost("long")
    for size, seconds in seconds_by_size.items():
        for _ in range(long_cost.min_observations):
            long_cost.observe(size, 30.0 * size, seconds)
    bus.worker.reconfigure(bus.worker.policy, True)
    bus.submit("L", parts=6)
    assert bus.worker.queue_depth() == 4  # alone: a whole batch of units, the best measured size
    bus.worker.cancel({"L"})
    bus.submit("S")  # a short request: more may follow
    bus.submit("A", parts=6)
    bus.submit("B", parts=6)
    assert bus.worker.queue_depth() == 1 + 2 * slice_size
    bus.worker.run_next()  # S, the soonest expected to finish
    assert bus.engine.calls == [["S"]]
    bus.worker.run_next()
    assert len(bus.engine.calls[-1]) == slice_size  # units of both, at most a slice together
