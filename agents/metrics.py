"""An agent's Prometheus exporter: the demand it sees, the model managers serving it, and
its live streams (endpoints.stt_metrics_port / tts_metrics_port, GET /metrics).

Demand lives here, not in a model manager, because it must be seen when no model manager
is alive: it is what an autoscaler (KEDA, deploy/k8s) scales the model managers on. Every
series is present from the start, 0 when idle, so that a query never finds nothing.

| name | type | labels |
|---|---|---|
| voicebus_model_demand | gauge | task, model: jobs waiting at the agent plus in flight at model managers |
| voicebus_model_managers | gauge | model: live model managers holding it |
| voicebus_jobs_resent_total | counter | task: jobs sent again after their model manager was lost |
| voicebus_duplicate_results_dropped_total | counter | task: late answers dropped by job id |
| voicebus_live_* | | the STT agent's live streams (see model_manager/metrics.py) |

The agent's loop writes a snapshot (`update`, at most twice a second); the exporter's
thread only reads the latest one, so nothing is shared that could change under it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agents.backend import Backend
from model_manager.config import Config
from model_manager.metrics import Exporter, live_metrics, serve_registry

log = logging.getLogger(__name__)

UPDATE_INTERVAL_S = 0.5


@dataclass(frozen=True)
class AgentFigures:
    demand: dict[str, int] = field(default_factory=dict)
    managers: dict[str, int] = field(default_factory=dict)
    resent: int = 0
    duplicates_dropped: int = 0
    live: dict[str, Any] | None = None


class AgentMetrics(Collector):
    def __init__(self, task: str, models: tuple[str, ...]) -> None:
        self.task = task
        self.figures = AgentFigures({m: 0 for m in models}, {m: 0 for m in models})
        self.registry = CollectorRegistry()
        self.registry.register(self)
        self._next_update = 0.0

    def start(self, config: Config, task: str) -> Exporter | None:
        """Serve /metrics on the agent's metrics port, or None when it is 0 or taken."""
        port = config.endpoints.stt_metrics_port if task == "stt" else config.endpoints.tts_metrics_port
        if not port:
            return None
        host = "0.0.0.0" if config.endpoints.host == "*" else config.endpoints.host
        try:
            return serve_registry(self.registry, host, port)
        except OSError as exc:
            log.error("agent metrics disabled: cannot listen on %s:%d: %s", host, port, exc)
            return None

    def update(self, backend: Backend, live: dict[str, Any] | None) -> None:
        now = time.monotonic()
        if now < self._next_update:
            return
        self._next_update = now + UPDATE_INTERVAL_S
        models = backend.configured
        self.figures = AgentFigures(
            {m: backend.dispatcher.demand(m) for m in models},
            {m: backend.registry.serving(m) for m in models},
            backend.counters.resent, backend.counters.duplicates_dropped, live,
        )

    def collect(self) -> Iterator[Metric]:
        figures = self.figures
        demand = GaugeMetricFamily("voicebus_model_demand", "Jobs waiting at the agent plus in flight at "
                                   "model managers, by model.", labels=["task", "model"])
        managers = GaugeMetricFamily("voicebus_model_managers", "Live model managers holding the model.",
                                     labels=["model"])
        for model, n in figures.demand.items():
            demand.add_metric([self.task, model], n)
            managers.add_metric([model], figures.managers.get(model, 0))
        resent = CounterMetricFamily("voicebus_jobs_resent", "Jobs sent again after their model manager "
                                     "died, hung, was cut off or left.", labels=["task"])
        resent.add_metric([self.task], figures.resent)
        dropped = CounterMetricFamily("voicebus_duplicate_results_dropped", "Late answers dropped by job "
                                      "id: another model manager held the job by then.", labels=["task"])
        dropped.add_metric([self.task], figures.duplicates_dropped)
        yield from (demand, managers, resent, dropped)
        if figures.live is not None:
            yield from live_metrics([figures.live])
