"""Admission of "infer" messages without sockets: replies and pushed answers are collected in
lists, the models are a stand-in engine's, and arrival times come from a clock the test sets."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from test_scheduler import EchoEngine

from model_manager import replies
from model_manager.admission import Admission
from model_manager.config import parse_config
from model_manager.errors import INVALID_FIELD
from model_manager.jobs import Job, Outcome
from model_manager.models import ModelSet

AGENT, OTHER = b"tcp://agent:5810", b"tcp://other:5810"


class Manager:
    """An Admission over a stand-in model; every answer, however it went out, in `answers`."""

    def __init__(self) -> None:
        self.now = time.monotonic()  # near the workers' own clock, which expires queued jobs
        config = parse_config({"batch_processing_config": {"max_queue_size": 2, "dynamic_batching": False}})
        self.models = ModelSet(config, self._deliver, [EchoEngine()])
        self.answers: list[tuple[bytes, dict[str, Any]]] = []
        self.admission = Admission(config, self.models, reply=self._answer,
                                   push=lambda identity, _job_id, message: self._answer(identity, message),
                                   clock=lambda: self.now)

    def _answer(self, identity: bytes, message: dict[str, Any]) -> None:
        self.answers.append((identity, message))

    def _deliver(self, job: Job, outcome: Outcome) -> None:
        self._answer(job.reply_to, replies.result(job.job_id, outcome, model=job.model))

    def load(self) -> None:
        self.models.start_workers()
        self.models.loaded.set()

    def infer(self, job_id: str, x: int = 1, identity: bytes = AGENT, stopping: bool = False,
              **fields: Any) -> None:
        message = {"type": "infer", "job_id": job_id, "task": "stt", "request": {"x": x}, **fields}
        self.admission.accept(identity, message, stopping)

    def wait(self, count: int) -> dict[str, dict[str, Any]]:
        """Each answered job's reply once `count` have come (answers come on other threads)."""
        deadline = time.monotonic() + 10
        while len(self.answers) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.answers) == count, self.answers
        return {message["job_id"]: message for _, message in self.answers}

    def close(self) -> None:
        self.admission.close()
        for worker in self.models.worker_list():
            worker.stop(5)


@pytest.fixture
def manager() -> Iterator[Manager]:
    made = Manager()
    yield made
    made.close()


def code(reply: dict[str, Any]) -> str | None:
    return None if reply["ok"] else reply["error"]["code"]


def test_jobs_are_held_while_the_models_load_bounded_cancellable_and_keep_their_deadline(manager):
    limit = manager.admission.held_limit
    for i in range(limit + 1):
        manager.infer(f"j{i}", timeout_ms=50 if i == 0 else 60_000)
    assert [(m["job_id"], code(m)) for _, m in manager.answers] == [(f"j{limit}", "overloaded")]
    manager.admission.cancel(AGENT, {"j1"})
    manager.now += 0.1  # j0's 50 ms pass while the models load
    manager.load()
    manager.admission.release_held(stopping=False)
    answered = manager.wait(limit)  # the refused one, and every held one but the cancelled
    assert code(answered["j0"]) == "timeout"  # its deadline counted from its arrival
    assert "j1" not in answered
    assert all(code(answered[f"j{i}"]) is None for i in range(2, limit))


def test_a_draining_manager_answers_new_jobs_shutting_down(manager):
    manager.load()
    manager.infer("late", stopping=True)
    assert code(manager.wait(1)["late"]) == "shutting_down"


def test_a_resent_job_is_ignored_until_its_result_went_out(manager):
    manager.load()
    manager.infer("a")
    manager.infer("a")  # a resend while the first copy is here
    assert manager.wait(1)["a"]["result"]["y"] == 1
    manager.admission.answered(AGENT, "a")
    manager.infer("a", x=2)  # a new job with the same id
    manager.wait(2)
    assert [m["result"]["y"] for _, m in manager.answers] == [1, 2]  # the resend never ran


def test_a_missing_field_is_bad_request_and_a_failed_prepare_answers_with_its_error(manager):
    manager.load()
    manager.admission.accept(AGENT, {"type": "infer", "job_id": "no-task", "request": {"x": 1}}, False)
    manager.infer("refused", x=-1)
    answered = manager.wait(2)
    assert code(answered["no-task"]) == "bad_request"
    assert code(answered["refused"]) == INVALID_FIELD
    assert manager.models.worker("echo").snapshot()["errors"] == {INVALID_FIELD: 1}


def test_dropping_an_agent_drops_its_jobs_and_no_other_agents(manager):
    manager.infer("a1")
    manager.infer("a2")
    manager.infer("b1", identity=OTHER)
    assert manager.admission.drop_agent(AGENT) == 2
    manager.load()
    manager.admission.release_held(stopping=False)
    assert set(manager.wait(1)) == {"b1"}
