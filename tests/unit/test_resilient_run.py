"""One batch on the engine, alone: out-of-memory halving, bad items failing alone, and whether
the run was clean enough to measure. No worker and no threads: a scripted engine."""

from __future__ import annotations

from collections.abc import Sequence

from test_scheduler import Echo, ScriptedEngine

from model_manager.engines.base import Request
from model_manager.errors import INFERENCE_FAILED, OUT_OF_MEMORY, BusError
from model_manager.memory import MemoryBudget
from model_manager.resilient_run import ResilientRun
from model_manager.worker_stats import WorkerStats


def runner(engine: ScriptedEngine) -> ResilientRun:
    return ResilientRun(engine, MemoryBudget("cpu"), WorkerStats())


def requests(count: int) -> list[dict[str, int]]:
    return [{"x": x} for x in range(count)]


def test_a_batch_that_runs_is_clean_and_its_engine_time_recorded():
    run = runner(ScriptedEngine())
    ran = run.run(requests(3))
    assert ran.outcomes == [Echo(0), Echo(1), Echo(2)] and ran.clean
    assert len(run.stats.compute_s) == 1 and not run.stats.fallbacks


def test_out_of_memory_halves_the_batch_down_to_what_fits():
    engine = ScriptedEngine(max_items=2)
    run = runner(engine)
    ran = run.run(requests(8))
    assert ran.outcomes == [Echo(x) for x in range(8)] and not ran.clean
    assert [len(c) for c in engine.calls] == [8, 4, 2, 2, 4, 2, 2]
    assert run.stats.fallbacks == {"oom_split": 3}


def test_out_of_memory_on_one_item_is_its_outcome():
    ran = runner(ScriptedEngine(max_items=0)).run(requests(2))
    assert [o.code for o in ran.outcomes] == [OUT_OF_MEMORY, OUT_OF_MEMORY]  # type: ignore[union-attr]


def test_a_bad_item_fails_alone_with_its_cause():
    engine = ScriptedEngine(poison=1)
    run = runner(engine)
    ran = run.run(requests(3))
    assert ran.outcomes[0] == Echo(0) and ran.outcomes[2] == Echo(2)
    failed = ran.outcomes[1]
    assert isinstance(failed, BusError) and failed.code == INFERENCE_FAILED
    assert failed.message == "ValueError: poisoned item"
    assert [len(c) for c in engine.calls] == [3, 1, 1, 1]
    assert run.stats.fallbacks == {"one_by_one": 1}


class ShortEngine(ScriptedEngine):
    """Drops the last result of a batch of more than one: a bug the run must not pass on."""

    def run_batch(self, requests: Sequence[Request]) -> list[Echo]:
        results = super().run_batch(requests)
        return results[:-1] if len(results) > 1 else results


def test_an_engine_that_returns_too_few_results_has_failed_the_batch():
    ran = runner(ShortEngine()).run(requests(3))
    assert ran.outcomes == [Echo(0), Echo(1), Echo(2)] and not ran.clean  # one by one instead
