"""The models one model manager serves: loading them, one worker each, choosing one for a
job, retuning their batching at run time, and their figures.

Thread-safety: the loader thread adds workers while the socket thread and the metrics
exporter read them, so every access to `workers` goes through one lock (`worker_list`,
`worker`). Nothing here touches a socket.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from model_manager.config import Config, ConfigError, ModelSpec, parse_config
from model_manager.engines.base import Engine
from model_manager.errors import INVALID_FIELD, MODEL_UNAVAILABLE, UNKNOWN_MODEL, BusError
from model_manager.jobs import Job, Outcome
from model_manager.lanes import build_at_low_priority, wants_long_lane
from model_manager.memory import read_memory
from model_manager.scheduler import ModelWorker
from model_manager.worker_stats import WorkerStats

log = logging.getLogger(__name__)


def select_engine(engines: Sequence[Engine], task: str, model_pref: str | None) -> Engine:
    """model_pref: None/"default" = first configured, "fast" = smallest, "quality" = largest, or a name."""
    candidates = [e for e in engines if e.task == task]
    if not candidates:
        raise BusError(MODEL_UNAVAILABLE, f"no {task} model is loaded")
    if model_pref in (None, "", "default"):
        return candidates[0]
    if model_pref == "fast":
        return min(candidates, key=lambda e: e.num_parameters)
    if model_pref == "quality":
        return max(candidates, key=lambda e: e.num_parameters)
    for engine in candidates:
        if engine.name == model_pref:
            return engine
    names = ", ".join(e.name for e in candidates)
    raise BusError(UNKNOWN_MODEL, f"model_pref {model_pref!r} is not 'fast', 'quality' or one of: {names}")


class ModelSet:
    def __init__(self, config: Config, deliver: Callable[[Job, Outcome], None],
                 engines: Sequence[Engine] | None = None,
                 long_lanes: Mapping[str, Engine] | None = None) -> None:
        self.config = config
        self._deliver = deliver
        self.engines: list[Engine] = list(engines or [])
        #: Model name -> the copy of its engine that runs its long lane (lanes.py).
        self.long_lanes: dict[str, Engine] = dict(long_lanes or {})
        self.workers: dict[str, ModelWorker] = {}
        self.load_error: str | None = None
        self.loaded = threading.Event()
        self._lock = threading.Lock()

    # --- loading --------------------------------------------------------------------------

    def served_specs(self) -> list[ModelSpec]:
        """The configured models this manager serves: `model_manager.models`, or all."""
        wanted = self.config.model_manager.models
        return [spec for spec in self._configured() if not wanted or spec.name in wanted]

    def load(self) -> None:
        """Build every served model (optional ones whose weights are missing are skipped) and
        start their workers; a failure is kept in `load_error`, with its cause."""
        from model_manager.engines.registry import build_engine, weights_installed

        try:
            for spec in self.served_specs():
                if spec.optional and not weights_installed(spec):
                    log.info("skipping optional model %s: weights %s not installed", spec.name, spec.weights)
                    continue
                started = time.perf_counter()
                engine = build_engine(spec)
                log.info("loaded %s on %s in %.1f s", spec.name, engine.device, time.perf_counter() - started)
                self.engines.append(engine)
                if wants_long_lane(spec.long_lane, engine.device):
                    started = time.perf_counter()
                    self.long_lanes[spec.name] = build_at_low_priority(functools.partial(build_engine, spec))
                    log.info("long lane of %s loaded in %.1f s", spec.name, time.perf_counter() - started)
            self.start_workers(warm_up=self.config.batch_processing_config.warmup)
        except Exception as exc:  # the model manager exits saying why
            log.exception("model loading failed")
            self.load_error = f"{type(exc).__name__}: {exc}"
        finally:
            self.loaded.set()

    def start_workers(self, warm_up: bool = False) -> None:
        policy = self.config.batch_processing_config
        instances = {s.name: s.instances for s in self._configured()}
        for engine in self.engines:
            worker = ModelWorker(engine, policy, self._deliver, dynamic_batching=policy.dynamic_batching,
                                 instances=instances.get(engine.name, 1),
                                 long_lane=self.long_lanes.get(engine.name))
            if warm_up and policy.dynamic_batching and policy.enabled:
                worker.warm_up()
            with self._lock:
                self.workers[engine.name] = worker
            worker.start()

    @property
    def ready(self) -> bool:
        return self.loaded.is_set() and self.load_error is None and bool(self.worker_list())

    # --- reading --------------------------------------------------------------------------

    def worker_list(self) -> list[ModelWorker]:
        """A copy of the workers, safe to iterate while the loader adds more."""
        with self._lock:
            return list(self.workers.values())

    def worker(self, name: str) -> ModelWorker | None:
        with self._lock:
            return self.workers.get(name)

    def worker_records(self) -> dict[str, WorkerStats]:
        """Every model's record of its batches (a copy), for the metrics exporter."""
        return {w.engine.name: w.stats.copy() for w in self.worker_list()}

    def engine_for(self, task: str, model_pref: str | None) -> Engine:
        """The engine a job runs on. A configured model this manager does not hold is
        `model_unavailable`: not run here, so the agent sends the job to one that holds it."""
        held = {e.name for e in self.engines}
        if model_pref not in held and model_pref in {s.name for s in self._configured()}:
            raise BusError(MODEL_UNAVAILABLE, f"this model manager does not hold {model_pref}")
        return select_engine(self.engines, task, model_pref)

    def snapshot(self) -> dict[str, Any]:
        """`models` (each worker's snapshot), `memory` per device and `workers` summed."""
        memory = {}
        for device in sorted({e.device for e in self.engines} or {"cpu"}):
            reading = read_memory(device)
            memory[device] = {"free_bytes": reading.free_bytes, "total_bytes": reading.total_bytes,
                              "process_rss_bytes": reading.process_rss_bytes}
            if reading.gpu_used_bytes is not None:
                memory[device].update(gpu_used_bytes=reading.gpu_used_bytes,
                                      gpu_total_bytes=reading.total_bytes)
        models = [w.snapshot() for w in self.worker_list()]
        workers = {k: sum(m["workers"][k] for m in models) for k in ("total", "ready", "busy")}
        return {"models": models, "memory": memory, "workers": workers}

    def free_memory_bytes(self) -> int:
        """Free memory where the models run: a hint for the agents, never a reason to fail."""
        device = next((e.device for e in self.engines), "cpu")
        try:
            return int(read_memory(device).free_bytes or 0)
        except Exception:
            return 0

    # --- retuning -------------------------------------------------------------------------

    def configure(self, message: dict[str, Any]) -> dict[str, Any]:
        """Change batching settings at run time: `settings` (a partial batch_processing_config)
        applies to `model`, or, when it is absent, to every model of `task` (every model when
        no task is given). Every value is checked before any is applied."""
        settings = message.get("settings")
        if not isinstance(settings, dict) or not settings:
            raise BusError(INVALID_FIELD, "settings must be a non-empty map of batch_processing_config keys")
        name, task = message.get("model"), message.get("task")
        if name is not None and not isinstance(name, str):
            raise BusError(INVALID_FIELD, f"model must be a model name (a string), got {type(name).__name__}")
        workers = [w for w in self.worker_list() if task is None or w.engine.task == task]
        if name is not None:
            workers = [w for w in workers if w.engine.name == name]
            if not workers:
                loaded = ", ".join(w.engine.name for w in self.worker_list() if task in (None, w.engine.task))
                raise BusError(UNKNOWN_MODEL, f"no loaded model {name!r}; loaded: {loaded}")
        updates = []
        for worker in workers:
            current = {**dataclasses.asdict(worker.policy), "dynamic_batching": worker.dynamic_batching}
            try:
                merged = parse_config({"batch_processing_config": {**current, **settings}})
                batch = merged.batch_processing_config
            except ConfigError as exc:
                raise BusError(INVALID_FIELD, str(exc)) from None
            updates.append((worker, batch))
        for worker, batch in updates:
            worker.reconfigure(batch, batch.dynamic_batching)
            log.info("reconfigured model=%s settings=%s", worker.engine.name, settings)
        return {"models": [w.snapshot() for w in workers]}

    def _configured(self) -> list[ModelSpec]:
        return [*self.config.stt_models, *self.config.tts_models]
