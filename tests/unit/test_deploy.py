"""The deployment files in deploy/ against Kubernetes' and KEDA's schemas and against
config/llm_config.yaml: ports, probes and grace periods must name what the bus really does.

Offline and fast: manifests are rendered with `kubectl kustomize` (skipped, saying so, where
kubectl is missing) and checked with kubernetes-validate (strict, Kubernetes 1.32) and
KEDA's own ScaledObject schema (tests/data/); nothing is applied, built or loaded.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("cpu", "gpu")
COMPONENTS = ("backend-curve",)
K8S_VERSION = "1.32"
KEDA_SCHEMA = Path(__file__).parent.parent / "data" / "keda_scaledobject_v1alpha1.yaml"
#: The Compose Specification's schema, as `docker compose` checks a file: vendored from
#: github.com/compose-spec/compose-spec, schema/compose-spec.json at commit 170098ba07d9.
COMPOSE_SCHEMA = Path(__file__).parent.parent / "data" / "compose-spec.json"
#: The prometheus scaler's metadata keys (kedacore/keda v2.20.2, pkg/scalers/prometheus_scaler.go):
#: the CRD takes any string map, so a misspelt key would pass its schema and be ignored.
PROMETHEUS_SCALER_KEYS = frozenset({
    "serverAddress", "query", "queryParameters", "threshold", "activationThreshold", "namespace",
    "customHeaders", "ignoreNullValues", "unsafeSsl", "awsRegion", "timeout", "identityOwner",
})
#: The slowest model load (weights, warm-up on a cold node) the startup probe must allow.
SLOWEST_LOAD_S = 600
#: Time after the drain, for DISCONNECT and exit, before SIGKILL.
EXIT_MARGIN_S = 15


@dataclass(frozen=True)
class Pool:
    """One model-manager pool: its Deployment serves one model of one task."""

    task: str
    model: str

    @property
    def name(self) -> str:
        return f"voicebus-mm-{self.task}"


POOLS = (Pool("stt", "whisper-tiny.en"), Pool("tts", "kokoro-82m"))
AGENTS = "voicebus-agents"


@dataclass(frozen=True)
class Settings:
    """The values of config/llm_config.yaml that the deployment files must agree with."""

    stt_port: int
    tts_port: int
    http_port: int
    wyoming_port: int
    stt_backend_port: int
    tts_backend_port: int
    metrics_port: int
    stt_metrics_port: int
    tts_metrics_port: int
    drain_timeout_s: float
    credit: int
    max_batch_size: int
    max_queue_size: int
    first_models: dict[str, str]

    def backend_port(self, task: str) -> int:
        return self.stt_backend_port if task == "stt" else self.tts_backend_port

    @property
    def capacity(self) -> int:
        """Jobs one model manager holds per model (ModelManagerAgent.credit): model_manager.credit,
        0 meaning 2 x max_batch_size, within max_queue_size."""
        return max(1, min(self.credit or 2 * self.max_batch_size, self.max_queue_size))

    def client_ports(self) -> dict[str, int]:
        return {"stt": self.stt_port, "tts": self.tts_port, "http": self.http_port,
                "wyoming": self.wyoming_port}

    def agent_ports(self) -> dict[str, int]:
        return {**self.client_ports(), "stt-backend": self.stt_backend_port,
                "tts-backend": self.tts_backend_port, "stt-metrics": self.stt_metrics_port,
                "tts-metrics": self.tts_metrics_port}


#: Defaults of the keys the file may not carry yet (model_manager/config.py's own).
DEFAULTS: dict[str, dict[str, Any]] = {
    "endpoints": {"stt_port": 5800, "tts_port": 5801, "http_port": 8880, "wyoming_port": 10300,
                  "stt_backend_port": 5810, "tts_backend_port": 5811, "metrics_port": 5890,
                  "stt_metrics_port": 5892, "tts_metrics_port": 5893},
    "model_manager": {"credit": 0, "drain_timeout_s": 60},
    "batch_processing_config": {"max_batch_size": 8, "max_queue_size": 256},
}


@functools.cache
def settings() -> Settings:
    raw = yaml.safe_load((ROOT / "config" / "llm_config.yaml").read_text())

    def value(section: str, key: str) -> Any:
        return (raw.get(section) or {}).get(key, DEFAULTS[section][key])

    models = raw.get("models") or {}
    return Settings(
        **{key: int(value("endpoints", key)) for key in DEFAULTS["endpoints"]},
        drain_timeout_s=float(value("model_manager", "drain_timeout_s")),
        credit=int(value("model_manager", "credit")),
        max_batch_size=int(value("batch_processing_config", "max_batch_size")),
        max_queue_size=int(value("batch_processing_config", "max_queue_size")),
        first_models={task: models[task][0]["name"] for task in ("stt", "tts") if models.get(task)},
    )


# --- rendering ---------------------------------------------------------------------------


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl is not installed: the Kubernetes manifests are not rendered or checked")
    return path


@functools.cache
def _render(directory: Path) -> tuple[dict[str, Any], ...]:
    # The load restrictor lets a kustomization outside deploy/ (a test's) name deploy/'s parts.
    command = [kubectl(), "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(directory)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"kubectl kustomize {directory}: {out.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def render(overlay: str) -> list[dict[str, Any]]:
    return copy.deepcopy(list(_render(K8S / "overlays" / overlay)))


def render_with_component(overlay: str, component: str, tmp: Path) -> list[dict[str, Any]]:
    """The overlay with the component added, as a user's own kustomization would add it."""
    (tmp / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [os.path.relpath(K8S / "overlays" / overlay, tmp)],
        "components": [os.path.relpath(K8S / "components" / component, tmp)],
    }))
    return copy.deepcopy(list(_render(tmp)))


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} in the rendered manifests"
    return found[0]


def container(workload: dict[str, Any]) -> dict[str, Any]:
    [only] = workload["spec"]["template"]["spec"]["containers"]
    return only


def env(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", [])}


def port_number(c: dict[str, Any], port: int | str) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert port in named, f"port {port!r} names none of {sorted(named)}"
    return named[port]


def probe_window_s(probe: dict[str, Any]) -> int:
    """How long a probe may fail before the kubelet acts."""
    period, failures = probe.get("periodSeconds", 10), probe.get("failureThreshold", 3)
    return probe.get("initialDelaySeconds", 0) + period * failures


# --- schemas -----------------------------------------------------------------------------


def kubernetes_validate() -> Any:
    return pytest.importorskip("kubernetes_validate.utils", reason="kubernetes-validate is in the test extra")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_passes_kubernetes_schemas_strictly(overlay):
    docs = render(overlay)
    check_kubernetes_schemas(docs)


@pytest.mark.parametrize("component", COMPONENTS)
def test_component_on_cpu_overlay_passes_kubernetes_schemas(component, tmp_path):
    docs = render_with_component("cpu", component, tmp_path)
    check_kubernetes_schemas(docs)
    mounts = [m["mountPath"] for d in docs if d["kind"] in ("Deployment", "StatefulSet")
              for m in container(d).get("volumeMounts", [])]
    assert any(p.startswith("/etc/voicebus/") for p in mounts), "the component mounts no keys"


def check_kubernetes_schemas(docs: list[dict[str, Any]]) -> None:
    utils = kubernetes_validate()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    expected = {("StatefulSet", AGENTS), ("Service", AGENTS), ("Service", "voicebus")}
    for pool in POOLS:
        expected |= {(kind, pool.name) for kind in ("Deployment", "PodDisruptionBudget", "ScaledObject")}
    assert expected <= kinds, f"missing: {sorted(expected - kinds)}"
    for doc in docs:
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # not a built-in kind: KEDA's schema, below
        # SchemaNotFoundError (an unknown kind or apiVersion) fails too, unlike the CLI's warning.
        utils.validate(doc, K8S_VERSION, strict=True)


def strict_openapi(schema: Any) -> Any:
    """`schema` as JSON Schema, with unknown fields refused: the API server prunes them in
    silence, so a misspelt field would vanish instead of failing. int-or-string becomes anyOf."""
    if isinstance(schema, list):
        return [strict_openapi(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict_openapi(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.cache
def keda_validator() -> Any:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is in the test extra")
    schema = strict_openapi(yaml.safe_load(KEDA_SCHEMA.read_text()))
    return jsonschema.Draft7Validator(schema)


def scaled_objects(docs: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    return (d for d in docs if d["kind"] == "ScaledObject")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scaled_objects_pass_kedas_schema(overlay):
    docs = render(overlay)
    for so in scaled_objects(docs):
        assert so["apiVersion"] == "keda.sh/v1alpha1"
        errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in keda_validator().iter_errors(so)]
        assert not errors, f"{so['metadata']['name']}: {errors}"
        spec = so["spec"]
        # The CRD's one CEL rule, which jsonschema cannot run.
        assert spec.get("minReplicaCount", 0) <= spec.get("maxReplicaCount", 100)


def test_strict_keda_schema_refuses_a_misspelt_field():
    so = next(scaled_objects(render("cpu")))
    so["spec"]["minReplicas"] = so["spec"].pop("minReplicaCount")
    assert not keda_validator().is_valid(so)
    so = next(scaled_objects(render("cpu")))
    so["spec"]["triggers"][0]["metadata"]["threshold"] = 16  # metadata values are strings
    assert not keda_validator().is_valid(so)


# --- Kubernetes: agreement with the config ---------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scaling_follows_demand_per_pool(overlay):
    docs = render(overlay)
    s = settings()
    for pool in POOLS:
        spec = find(docs, "ScaledObject", pool.name)["spec"]
        target = spec["scaleTargetRef"]
        assert (target.get("kind", "Deployment"), target["name"]) == ("Deployment", pool.name)
        find(docs, "Deployment", pool.name)
        # Never to zero: a model manager's cold start takes minutes.
        assert spec["minReplicaCount"] >= 1
        [trigger] = spec["triggers"]
        assert trigger["type"] == "prometheus"
        assert trigger["metricType"] == "AverageValue"
        meta = trigger["metadata"]
        assert set(meta) <= PROMETHEUS_SCALER_KEYS, sorted(set(meta) - PROMETHEUS_SCALER_KEYS)
        assert meta["query"] == f'sum(voicebus_model_demand{{model="{pool.model}"}})'
        assert meta["threshold"] == str(s.capacity)
        assert re.match(r"https?://", meta["serverAddress"])
        # A missing series is an error (fallback), never a demand of 0 (scale down).
        assert meta.get("ignoreNullValues") == "false"
        fallback = spec["fallback"]
        assert fallback["behavior"] == "currentReplicasIfHigher"
        assert fallback["failureThreshold"] >= 1 and fallback["replicas"] >= spec["minReplicaCount"]
        behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        assert behavior["scaleUp"]["policies"] == [{"type": "Pods", "value": 2, "periodSeconds": 60}]
        assert behavior["scaleDown"]["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 300}]
        assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 600


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_agents_ports_services_and_probes_agree_with_config(overlay):
    docs = render(overlay)
    s = settings()
    sts = find(docs, "StatefulSet", AGENTS)
    c = container(sts)
    assert c["args"] == ["python", "-m", "agents.launcher", "--role", "agents"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == s.agent_ports()
    e = env(c)
    assert e["VOICEBUS__ENDPOINTS__HOST"] == e["VOICEBUS__ENDPOINTS__BACKEND_HOST"] == "0.0.0.0"

    headless = find(docs, "Service", AGENTS)["spec"]
    assert sts["spec"]["serviceName"] == AGENTS and headless["clusterIP"] == "None"
    # Model managers must resolve the pod before it is ready: its readiness waits for them.
    assert headless["publishNotReadyAddresses"] is True
    assert {p["port"] for p in headless["ports"]} >= {s.stt_backend_port, s.tts_backend_port}
    client = find(docs, "Service", "voicebus")["spec"]
    # One pool without a model manager must not cut the other task's clients off.
    assert client["publishNotReadyAddresses"] is True
    assert {p["name"]: p["port"] for p in client["ports"]} == s.client_ports()
    for service in (headless, client):
        assert service["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
        for p in service["ports"]:
            assert port_number(c, p["targetPort"]) == p["port"]

    readiness, liveness = c["readinessProbe"], c["livenessProbe"]
    assert readiness["httpGet"]["path"] == "/health"
    assert port_number(c, readiness["httpGet"]["port"]) == s.http_port
    assert port_number(c, liveness["tcpSocket"]["port"]) == s.stt_port

    [claim] = sts["spec"]["volumeClaimTemplates"]
    [mount] = [m for m in c["volumeMounts"] if m["name"] == claim["metadata"]["name"]]
    assert e["VOICEBUS__LIMITS__JOURNAL_DIR"] == mount["mountPath"]

    from agents.launcher import SHUTDOWN_GRACE_S
    grace = sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= SHUTDOWN_GRACE_S + EXIT_MARGIN_S


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_model_managers_agree_with_config(overlay):
    docs = render(overlay)
    s = settings()
    for pool in POOLS:
        deployment = find(docs, "Deployment", pool.name)
        pod = deployment["spec"]["template"]
        c = container(deployment)
        e = env(c)
        assert c["args"] == ["python", "-m", "model_manager"]
        assert yaml.safe_load(e["VOICEBUS__MODEL_MANAGER__MODELS"]) == [pool.model]
        agents = yaml.safe_load(e["VOICEBUS__MODEL_MANAGER__AGENTS"])
        assert agents == [f"tcp://{AGENTS}-0.{AGENTS}:{s.backend_port(pool.task)}"]
        assert e["VOICEBUS__ENDPOINTS__HOST"] == "0.0.0.0"
        # Per-model options are addressed by index: it must be the model this pool serves.
        for name in e:
            if m := re.match(r"VOICEBUS__MODELS__(STT|TTS)__0__", name):
                assert m.group(1).lower() == pool.task and s.first_models[pool.task] == pool.model

        assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"metrics": s.metrics_port}
        assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(s.metrics_port)
        probes = {kind: c[f"{kind}Probe"] for kind in ("startup", "readiness", "liveness")}
        paths = {kind: p["httpGet"]["path"] for kind, p in probes.items()}
        assert paths == {"startup": "/livez", "readiness": "/readyz", "liveness": "/livez"}
        for probe in probes.values():
            assert port_number(c, probe["httpGet"]["port"]) == s.metrics_port
        assert probe_window_s(probes["startup"]) >= SLOWEST_LOAD_S

        drain = float(e.get("VOICEBUS__MODEL_MANAGER__DRAIN_TIMEOUT_S", s.drain_timeout_s))
        assert pod["spec"]["terminationGracePeriodSeconds"] >= drain + EXIT_MARGIN_S
        assert "replicas" not in deployment["spec"], "KEDA owns the count; apply must not reset it"

        pdb = find(docs, "PodDisruptionBudget", pool.name)["spec"]
        assert pdb["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()

        limits = c["resources"].get("limits", {})
        if overlay == "gpu":
            assert limits.get("nvidia.com/gpu") == 1 and c["image"].endswith("-cuda")
        else:
            assert "nvidia.com/gpu" not in limits and c["image"].endswith("-cpu")


def test_prometheus_scrape_config_keeps_every_exporter():
    docs = render("cpu")
    [job] = yaml.safe_load((DEPLOY / "prometheus" / "scrape-configs.yaml").read_text())["scrape_configs"]
    [keep] = [r for r in job["relabel_configs"] if r.get("action") == "keep"
              and r["source_labels"] == ["__meta_kubernetes_pod_container_port_name"]]
    s = settings()
    numbers = {s.stt_metrics_port, s.tts_metrics_port, s.metrics_port}
    ports = [p for d in docs if d["kind"] in ("Deployment", "StatefulSet") for p in container(d)["ports"]]
    exporters = {p["name"] for p in ports if p["containerPort"] in numbers}
    assert len(exporters) == 3
    for name in exporters:
        assert re.fullmatch(keep["regex"], name), name
    others = {p["name"] for p in ports} - exporters
    assert not any(re.fullmatch(keep["regex"], name) for name in others)


# --- compose and the image ---------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def published(ports: list[str | int]) -> set[int]:
    """Container ports of compose's short syntax: [IP:][HOST:]CONTAINER[/PROTO]."""
    return {int(str(p).split("/")[0].rsplit(":", 1)[-1]) for p in ports}


def health_url(service: dict[str, Any]) -> tuple[int, str]:
    [url] = re.findall(r"http://127\.0\.0\.1:(\d+)(/\w+)", " ".join(service["healthcheck"]["test"]))
    return int(url[0]), url[1]


def seconds(duration: str) -> float:
    value, unit = re.fullmatch(r"(\d+)(s|m)", duration).groups()
    return float(value) * (60 if unit == "m" else 1)


def test_compose_passes_the_compose_schema():
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is in the test extra")
    validator = jsonschema.Draft7Validator(json.loads(COMPOSE_SCHEMA.read_text()))
    errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(compose())]
    assert not errors


def test_compose_names_the_configured_ports():
    s = settings()
    services = compose()["services"]
    agents = services["agents"]
    assert agents["command"] == ["python", "-m", "agents.launcher", "--role", "agents"]
    assert published(agents["ports"]) == set(s.client_ports().values())
    assert health_url(agents) == (s.http_port, "/health")
    journal = agents["environment"]["VOICEBUS__LIMITS__JOURNAL_DIR"]
    assert any(v.split(":")[1] == journal for v in agents["volumes"])
    for pool in POOLS:
        mm = services[f"mm-{pool.task}"]
        e = mm["environment"]
        assert mm["command"] == ["python", "-m", "model_manager"]
        assert yaml.safe_load(e["VOICEBUS__MODEL_MANAGER__MODELS"]) == [pool.model]
        assert yaml.safe_load(e["VOICEBUS__MODEL_MANAGER__AGENTS"]) == [f"tcp://agents:{s.backend_port(pool.task)}"]
        assert health_url(mm) == (s.metrics_port, "/readyz")
        assert "ports" not in mm, "the backend and metrics stay on the compose network"
        assert seconds(mm["stop_grace_period"]) >= s.drain_timeout_s + EXIT_MARGIN_S
        assert mm["depends_on"]["agents"]["condition"] == "service_started"


def test_dockerfile_exposes_the_ports_and_pins_torch_first():
    s = settings()
    text = (DEPLOY / "Dockerfile").read_text()
    exposed = {int(p) for line in re.findall(r"^EXPOSE (.+)$", text, re.M) for p in line.split()}
    assert exposed >= set(s.agent_ports().values()) | {s.metrics_port}
    torch = re.search(r'"torch==([\d.]+)"', (ROOT / "scripts" / "setup.sh").read_text()).group(1)
    first_torch = text.index(f'"torch=={torch}"')
    constraint = text.index(f"echo \"torch=={torch}\" > /opt/venv/torch-constraint.txt")
    project = text.index("pip install -c /opt/venv/torch-constraint.txt")
    assert first_torch < constraint < project
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1] not in ("root", "0")
