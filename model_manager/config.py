"""Configuration: config/llm_config.yaml, overridden by VOICEBUS__* environment variables.

`load_config()` returns a frozen, validated `Config`. Anything wrong stops start-up with a
`ConfigError` whose message names the offending key, e.g.
``batch_processing_config.min_batch_size: must be <= max_batch_size (8), got 9``.

Environment overrides: ``VOICEBUS__BATCH_PROCESSING_CONFIG__MAX_BATCH_SIZE=4`` sets
``batch_processing_config.max_batch_size``. List items are addressed by index
(``VOICEBUS__MODELS__STT__0__DEVICE=cuda``). Values are parsed as YAML scalars.
``VOICEBUS_CONFIG`` points at another config file.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, get_type_hints

import yaml

from model_manager.batcher import BatchPolicy

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "config" / "llm_config.yaml"
ENV_PREFIX = "VOICEBUS__"


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key."""


#: The batching settings are the batcher's own policy type: one idea, one type.
BatchConfig = BatchPolicy


@dataclass(frozen=True)
class Endpoints:
    host: str = "127.0.0.1"
    stt_port: int = 5800
    tts_port: int = 5801
    #: Where each agent binds the backend ROUTER that model managers connect out to
    #: (docs/protocol.md section 6). Other interfaces are an explicit choice, with
    #: security.backend_curve_enabled across hosts.
    backend_host: str = "127.0.0.1"
    stt_backend_port: int = 5810
    tts_backend_port: int = 5811
    #: A model manager's HTTP server (/metrics, /livez, /readyz, on `host`); replica i of one
    #: host uses metrics_port + i; 0 turns it off.
    metrics_port: int = 5890
    #: Each agent's Prometheus exporter (demand, model managers, live streams); 0: off.
    stt_metrics_port: int = 5892
    tts_metrics_port: int = 5893
    #: The launcher's monitoring page, always on 127.0.0.1; 0 turns it off.
    monitor_port: int = 5891
    #: The HTTP gateway (OpenAI audio API and REST, agents/gateway/), on `host`; 0 turns it off.
    http_port: int = 8880
    #: Wyoming (Home Assistant's voice services), served by the gateway on `host`; 0 turns
    #: it off (and so does http_port 0, which leaves the gateway out).
    wyoming_port: int = 10300


@dataclass(frozen=True)
class Limits:
    request_timeout_ms: int = 120_000
    result_ttl_s: float = 600.0
    max_audio_seconds: float = 600.0
    max_text_chars: int = 20_000
    max_batch_items: int = 64
    max_message_bytes: int = 64 * 1024 * 1024
    #: TTS `output_path` files are written under this directory and nowhere else.
    output_dir: str = "output"
    #: queue_for_batch jobs and results survive agent restarts in one SQLite file per agent here.
    journal_dir: str = "~/.cache/voicebus/journal"
    #: Streams open at once per agent; one more is refused with "overloaded".
    max_open_streams: int = 64
    #: A stream nobody reads for this long is closed, and its unmade outputs cancelled.
    stream_idle_s: float = 60.0
    #: Outputs a stream makes ahead of its reader (in progress or ready but unread).
    stream_buffer: int = 4
    #: Live STT: the longest audio one stream_audio chunk may carry.
    stream_max_chunk_s: float = 10.0
    #: Live STT: a stream whose client hung up is closed unless a call comes this soon.
    stream_hangup_grace_s: float = 2.0
    #: Live STT: threads that run the streams' VAD side by side (each carries about 100
    #: streams); 0: one per core, up to 4.
    stream_vad_threads: int = 0
    #: A job for a model no live model manager holds waits this long (within its own
    #: timeout) for one to join, then gets model_unavailable.
    model_wait_ms: int = 30_000


@dataclass(frozen=True)
class Security:
    #: CurveZMQ encryption and client authentication on the client-facing agent sockets.
    curve_enabled: bool = False
    #: The agents' secret key file (`python -m agents.keys` writes server.key_secret).
    server_secret_key_file: str = ""
    #: Public keys (*.key) of the clients allowed in; re-read when an unknown key knocks.
    authorized_clients_dir: str = ""
    #: CurveZMQ on the agents' backend: only model managers whose keys are listed get work.
    backend_curve_enabled: bool = False
    #: Public keys (*.key) of the model managers allowed on the backend.
    authorized_model_managers_dir: str = ""
    #: A model manager's own key pair (a *.key_secret file).
    model_manager_secret_key_file: str = ""
    #: The agents' public key (server.key), for model managers on other hosts.
    server_public_key_file: str = ""


@dataclass(frozen=True)
class ModelManagerConfig:
    """Where a model manager connects and what it serves (docs/deploy.md)."""

    #: The agents' backend addresses ("tcp://host:port") to connect out to; empty: this
    #: host's agents (endpoints.backend_host, stt_backend_port and tts_backend_port).
    agents: tuple[str, ...] = ()
    #: Names of the configured models to load and serve; empty: every configured model.
    models: tuple[str, ...] = ()
    #: Model managers the launcher starts on this host (one per GPU: replica i sees
    #: CUDA_VISIBLE_DEVICES=i when the host has GPUs).
    replicas: int = 1
    #: Jobs per model one model manager holds at once, queued and running; 0: twice
    #: batch_processing_config.max_batch_size, capped by max_queue_size.
    credit: int = 0
    #: On SIGTERM: no new work, and what it holds is finished within this, then DISCONNECT.
    drain_timeout_s: float = 60.0


@dataclass(frozen=True)
class GatewayConfig:
    """The HTTP gateway (agents/gateway/): its keys, limits and the names OpenAI clients send."""

    #: API keys, one per line; with none here or in `api_keys_env`, no key is asked for.
    api_keys_file: str = ""
    #: An environment variable holding comma-separated API keys.
    api_keys_env: str = "VOICEBUS_API_KEYS"
    #: Request bodies over this get 413 without being read (OpenAI's limit is 25 MB).
    max_upload_bytes: int = 25 * 1024 * 1024
    #: Speech input over this many characters gets 413 (OpenAI's limit is 4096).
    max_input_chars: int = 4096
    #: model_pref for /v1/audio/translations when the client names an OpenAI model.
    translation_model: str = "quality"
    #: OpenAI model name -> model_pref ("" : the first configured model of the task).
    model_names: dict[str, Any] = field(default_factory=dict)
    #: OpenAI voice name -> voice pack (or mix) of the TTS model.
    voice_names: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LoggingConfig:
    #: Threshold for every process's log; the VOICEBUS_LOG_LEVEL variable, when set, wins.
    level: str = "INFO"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    engine: str
    weights: str = ""
    device: str = "auto"
    compute_type: str = "auto"
    optional: bool = False
    #: Worker threads sharing this model's queue: >1 keeps several batches in flight.
    instances: int = 1
    #: Extra keyword arguments for the engine's constructor (e.g. voices_dir, backend).
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    batch_processing_config: BatchPolicy
    endpoints: Endpoints
    limits: Limits
    stt_models: tuple[ModelSpec, ...]
    tts_models: tuple[ModelSpec, ...]
    logging: LoggingConfig = LoggingConfig()
    security: Security = Security()
    gateway: GatewayConfig = GatewayConfig()
    model_manager: ModelManagerConfig = ModelManagerConfig()

    def models(self, task: str) -> tuple[ModelSpec, ...]:
        return self.stt_models if task == "stt" else self.tts_models


STT_ENGINES = ("ctranslate2", "transformers")
TTS_ENGINES = ("kokoro",)
DEVICES = ("auto", "cpu", "cuda")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    environ = os.environ if environ is None else environ
    path = Path(path or environ.get("VOICEBUS_CONFIG") or DEFAULT_CONFIG_PATH)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    apply_env_overrides(raw, environ)
    return parse_config(raw)


def apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX) :].split("__")]
        node: Any = raw
        for depth, key in enumerate(keys):
            last = depth == len(keys) - 1
            dotted = ".".join(keys[: depth + 1])
            if isinstance(node, list):
                if not key.isdigit() or int(key) >= len(node):
                    raise ConfigError(f"{dotted} (from {name}): no such list item")
                key = int(key)  # type: ignore[assignment]
            elif not isinstance(node, dict):
                raise ConfigError(f"{dotted} (from {name}): parent is not a mapping")
            if last:
                node[key] = yaml.safe_load(value)
            else:
                if isinstance(node, dict) and key not in node:
                    node[key] = {}
                node = node[key]


def parse_config(raw: Mapping[str, Any]) -> Config:
    known = {"batch_processing_config", "endpoints", "limits", "models", "logging", "security", "gateway",
             "model_manager"}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{sorted(unknown)[0]}: unknown top-level key")
    batch_raw = raw.get("batch_processing_config", {})
    batch = _build(BatchPolicy, batch_raw, "batch_processing_config", _check_batch)
    endpoints = _build(Endpoints, raw.get("endpoints", {}), "endpoints")
    limits = _build(Limits, raw.get("limits", {}), "limits")
    logging_config = _build(LoggingConfig, raw.get("logging", {}), "logging")
    security = _build(Security, raw.get("security", {}), "security")
    gateway = _build(GatewayConfig, raw.get("gateway", {}), "gateway")
    manager = _build(ModelManagerConfig, raw.get("model_manager", {}) or {}, "model_manager")
    models = raw.get("models", {}) or {}
    if not isinstance(models, dict):
        raise ConfigError("models: must be a mapping with 'stt' and 'tts' lists")
    stt = _build_models(models.get("stt") or [], "models.stt", STT_ENGINES)
    tts = _build_models(models.get("tts") or [], "models.tts", TTS_ENGINES)
    _check_ports(endpoints)
    _check(
        logging_config.level.upper() in LOG_LEVELS,
        "logging.level",
        f"must be one of {list(LOG_LEVELS)}",
        logging_config.level,
    )
    for key in (
        "request_timeout_ms",
        "result_ttl_s",
        "max_audio_seconds",
        "max_text_chars",
        "max_batch_items",
        "max_message_bytes",
        "max_open_streams",
        "stream_idle_s",
        "stream_buffer",
        "stream_max_chunk_s",
        "stream_hangup_grace_s",
        "model_wait_ms",
    ):
        _check(getattr(limits, key) > 0, f"limits.{key}", "must be > 0", getattr(limits, key))
    _check(limits.stream_vad_threads >= 0, "limits.stream_vad_threads", "must be >= 0",
           limits.stream_vad_threads)
    _check(bool(limits.journal_dir), "limits.journal_dir", "must not be empty", limits.journal_dir)
    if security.curve_enabled:
        for key in ("server_secret_key_file", "authorized_clients_dir"):
            _check(bool(getattr(security, key)), f"security.{key}", "is required with curve_enabled", "")
    for key in ("max_upload_bytes", "max_input_chars"):
        _check(getattr(gateway, key) > 0, f"gateway.{key}", "must be > 0", getattr(gateway, key))
    for key in ("model_names", "voice_names"):
        names = getattr(gateway, key)
        _check(all(isinstance(k, str) and isinstance(v, str) for k, v in names.items()),
               f"gateway.{key}", "must map names to strings", names)
    if security.backend_curve_enabled:
        for key in ("server_secret_key_file", "authorized_model_managers_dir"):
            _check(bool(getattr(security, key)), f"security.{key}", "is required with backend_curve_enabled",
                   "")
    _check(1 <= manager.replicas <= 64, "model_manager.replicas", "must be between 1 and 64",
           manager.replicas)
    _check(manager.credit >= 0, "model_manager.credit", "must be >= 0", manager.credit)
    _check(manager.drain_timeout_s > 0, "model_manager.drain_timeout_s", "must be > 0",
           manager.drain_timeout_s)
    names = {spec.name for spec in (*stt, *tts)}
    for i, name in enumerate(manager.models):
        _check(name in names, f"model_manager.models.{i}", f"must name a configured model {sorted(names)}",
               name)
    for i, address in enumerate(manager.agents):
        _check(isinstance(address, str) and address.startswith("tcp://"), f"model_manager.agents.{i}",
               "must be a tcp://host:port address", address)
    return Config(batch, endpoints, limits, stt, tts, logging_config, security, gateway, manager)


#: Ports that must be set; every other `*_port` of Endpoints may be 0 (off).
REQUIRED_PORTS = ("stt_port", "tts_port", "stt_backend_port", "tts_backend_port")


def _check_ports(endpoints: Endpoints) -> None:
    """Every field named `*_port` is a port, so a new one cannot be left out of the checks."""
    ports = {f.name: getattr(endpoints, f.name) for f in dataclasses.fields(endpoints)
             if f.name.endswith("_port")}
    for key, port in ports.items():
        if key in REQUIRED_PORTS:
            _check(0 < port < 65536, f"endpoints.{key}", "must be a TCP port (1-65535)", port)
        else:
            _check(0 <= port < 65536, f"endpoints.{key}", "must be a TCP port (1-65535), or 0 for off", port)
    used = {key: port for key, port in ports.items() if port}
    _check(len(set(used.values())) == len(used), "endpoints", "the ports must all differ", used)


def _check_batch(batch: Any) -> None:
    """Checked before the policy is built, so that each message names its key."""
    _check(
        batch.max_batch_size >= 1,
        "batch_processing_config.max_batch_size",
        "must be >= 1",
        batch.max_batch_size,
    )
    _check(
        1 <= batch.min_batch_size <= batch.max_batch_size,
        "batch_processing_config.min_batch_size",
        f"must be between 1 and max_batch_size ({batch.max_batch_size})",
        batch.min_batch_size,
    )
    _check(
        batch.max_batch_wait_ms >= 0,
        "batch_processing_config.max_batch_wait_ms",
        "must be >= 0",
        batch.max_batch_wait_ms,
    )
    _check(
        batch.lone_request_wait_ms >= 0,
        "batch_processing_config.lone_request_wait_ms",
        "must be >= 0",
        batch.lone_request_wait_ms,
    )
    _check(
        batch.max_queue_size >= 1,
        "batch_processing_config.max_queue_size",
        "must be >= 1",
        batch.max_queue_size,
    )


def _build_models(items: Any, where: str, engines: tuple[str, ...]) -> tuple[ModelSpec, ...]:
    if not isinstance(items, list):
        raise ConfigError(f"{where}: must be a list")
    specs = tuple(_build(ModelSpec, item, f"{where}.{i}") for i, item in enumerate(items))
    for i, spec in enumerate(specs):
        _check(spec.engine in engines, f"{where}.{i}.engine", f"must be one of {list(engines)}", spec.engine)
        _check(spec.device in DEVICES, f"{where}.{i}.device", f"must be one of {list(DEVICES)}", spec.device)
        _check(bool(spec.name), f"{where}.{i}.name", "must not be empty", spec.name)
        _check(
            1 <= spec.instances <= 16, f"{where}.{i}.instances", "must be between 1 and 16", spec.instances
        )
    names = [s.name for s in specs]
    _check(len(set(names)) == len(names), where, "model names must be unique", names)
    return specs


def _build(cls: type, data: Any, where: str, validate: Callable[[Any], None] | None = None) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown key (known: {', '.join(fields)})")
    values = {}
    for name, f in fields.items():
        key = f"{where}.{name}"
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{key}: required")
            continue
        values[name] = _coerce(data[name], hints[name], key)
    if validate is not None:
        defaults = {f.name: f.default for f in fields.values() if f.default is not dataclasses.MISSING}
        validate(SimpleNamespace(**{**defaults, **values}))
    return cls(**values)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    expected = getattr(annotation, "__origin__", annotation)
    # bool is an int subclass in Python: refuse "max_batch_size: true" explicitly.
    if expected is bool:
        ok = isinstance(value, bool)
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif expected is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif expected is str:
        ok = isinstance(value, str)
    elif expected is dict:
        ok = isinstance(value, dict)
    elif expected is tuple:
        # A list in YAML; one string (from an environment variable) is a list of one.
        value = [value] if isinstance(value, str) else value
        ok = isinstance(value, list) and all(isinstance(item, str) for item in value)
        value = tuple(value) if ok else value
    else:  # pragma: no cover - every field type is listed above
        raise TypeError(annotation)
    if not ok:
        raise ConfigError(f"{key}: expected {expected.__name__}, got {value!r}")
    return value


def _check(ok: bool, key: str, rule: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}: {rule}, got {value!r}")
