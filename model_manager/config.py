"""Configuration: config/llm_config.yaml, overridden by VOICEBUS__* environment variables.

`load_config()` returns a frozen, validated `Config`: one pydantic model per section, with
strict types (a bool is not an int, a string is not a number; an int is a fine float), each
field's bounds on the field, and the rules across fields as validators. Anything wrong stops
start-up with a `ConfigError` whose message names the offending key first, e.g.
``batch_processing_config.min_batch_size: must be <= max_batch_size (8), got 9``.

Environment overrides: ``VOICEBUS__BATCH_PROCESSING_CONFIG__MAX_BATCH_SIZE=4`` sets
``batch_processing_config.max_batch_size``. List items are addressed by index
(``VOICEBUS__MODELS__STT__0__DEVICE=cuda``). Values are parsed as YAML scalars.
``VOICEBUS_CONFIG`` points at another config file.

A changed copy is made with ``model_copy(update=...)`` (it is not validated again).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_type_hints

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    PlainValidator,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import core_schema

from model_manager.batcher import BatchPolicy

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "config" / "llm_config.yaml"
ENV_PREFIX = "VOICEBUS__"

STT_ENGINES = ("ctranslate2", "transformers")
TTS_ENGINES = ("kokoro",)
DEVICES = ("auto", "cpu", "cuda")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key."""


#: The type of `Config.batch_processing_config`: the batcher's own policy, so the model manager
#: hands the configured value to its workers as it is. `BatchSettings` checks it.
BatchConfig = BatchPolicy


class Broken(ValueError):
    """A rule broken, raised by a validator: `key` is the offending field, dotted, relative to
    the value validated ("" for that value itself), so the message can name it."""

    def __init__(self, key: str, rule: str, value: Any) -> None:
        super().__init__(f"{key}: {rule}" if key else rule)
        self.key, self.rule, self.value = key, rule, value


# --- field types --------------------------------------------------------------------------


class _PortMarker:
    """Marks a field as a port, for the check that the ports all differ."""


_PORT = _PortMarker()
#: A TCP port that must be set.
Port = Annotated[int, Field(ge=1, le=65535), _PORT]
#: A TCP port, or 0 for off.
OptionalPort = Annotated[int, Field(ge=0, le=65535), _PORT]
Positive = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


def _listed(value: Any) -> Any:
    """A YAML list is a tuple here; one string (from an environment variable) is a list of one."""
    if isinstance(value, str):
        return (value,)
    return tuple(value) if isinstance(value, list) else value


def _tcp_address(value: str) -> str:
    if not value.startswith("tcp://"):
        raise Broken("", "must be a tcp://host:port address", value)
    return value


Names = Annotated[tuple[str, ...], BeforeValidator(_listed)]


def _true_false_or_auto(value: Any) -> Any:
    if value is True or value is False or value == "auto":
        return value
    raise Broken("", "must be true, false or auto", value)


TrueFalseOrAuto = Annotated[bool | Literal["auto"], PlainValidator(_true_false_or_auto)]
TcpAddresses = Annotated[tuple[Annotated[str, AfterValidator(_tcp_address)], ...], BeforeValidator(_listed)]


class _Section(BaseModel):
    """One mapping of the file: frozen, strict, and no key it does not know."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        # extra="forbid" alone would refuse the key without saying which keys are known.
        if isinstance(data, dict):
            known = [info.alias or name for name, info in cls.model_fields.items()]
            unknown = sorted((key for key in data if key not in known), key=str)
            if unknown:
                raise Broken(str(unknown[0]), f"unknown key (known: {', '.join(known)})", data[unknown[0]])
        return data


# --- sections -----------------------------------------------------------------------------

_BATCH = BatchPolicy()
#: Bounds of the batching settings; every other BatchPolicy field is taken with its type alone.
_BATCH_BOUNDS: dict[str, dict[str, Any]] = {
    "max_batch_size": {"ge": 1},
    "min_batch_size": {"ge": 1},
    "max_batch_wait_ms": {"ge": 0},
    "max_queue_size": {"ge": 1},
    "lone_request_wait_ms": {"ge": 0},
}


class _BatchRules(_Section):
    """The rules across the batching settings (the fields are `BatchPolicy`'s, see below)."""

    @model_validator(mode="after")
    def _sizes_in_order(self) -> _BatchRules:
        smallest, largest = getattr(self, "min_batch_size"), getattr(self, "max_batch_size")  # noqa: B009
        if smallest > largest:
            raise Broken("min_batch_size", f"must be <= max_batch_size ({largest})", smallest)
        return self

    def policy(self) -> BatchPolicy:
        return BatchPolicy(**self.model_dump())


def _batch_field(f: dataclasses.Field[Any], hint: Any) -> tuple[Any, Any]:
    default = ... if f.default is dataclasses.MISSING else f.default
    return hint, Field(default, **_BATCH_BOUNDS.get(f.name, {}))


#: `batch_processing_config`, checked, and kept as the batcher's `BatchPolicy`: a field per
#: BatchPolicy field, with its type and default, so that a setting the batcher gains is
#: configurable (and retunable by `configure`) without a change here.
BatchSettings: type[_BatchRules] = create_model(
    "BatchSettings",
    __base__=_BatchRules,
    **{f.name: _batch_field(f, get_type_hints(BatchPolicy)[f.name]) for f in dataclasses.fields(BatchPolicy)},
)


@dataclasses.dataclass(frozen=True)
class _CheckedBy:
    """A field whose value is checked by `model` and kept as `convert(checked)`."""

    model: type[BaseModel]
    convert: Callable[[Any], Any]
    dump: Callable[[Any], Any]

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(
            self.convert,
            handler.generate_schema(self.model),
            serialization=core_schema.plain_serializer_function_ser_schema(self.dump),
        )


class Endpoints(_Section):
    host: str = "127.0.0.1"
    stt_port: Port = 5800
    tts_port: Port = 5801
    #: Where each agent binds the backend ROUTER that model managers connect out to
    #: (docs/protocol.md section 6). Other interfaces are an explicit choice, with
    #: security.backend_curve_enabled across hosts.
    backend_host: str = "127.0.0.1"
    stt_backend_port: Port = 5810
    tts_backend_port: Port = 5811
    #: A model manager's HTTP server (/metrics, /livez, /readyz, on `host`); replica i of one
    #: host uses metrics_port + i; 0 turns it off.
    metrics_port: OptionalPort = 5890
    #: Each agent's Prometheus exporter (demand, model managers, live streams); 0: off.
    stt_metrics_port: OptionalPort = 5892
    tts_metrics_port: OptionalPort = 5893
    #: The launcher's monitoring page, always on 127.0.0.1; 0 turns it off.
    monitor_port: OptionalPort = 5891
    #: The HTTP gateway (OpenAI audio API and REST, agents/gateway/), on `host`; 0 turns it off.
    http_port: OptionalPort = 8880
    #: Wyoming (Home Assistant's voice services), served by the gateway on `host`; 0 turns
    #: it off (and so does http_port 0, which leaves the gateway out).
    wyoming_port: OptionalPort = 10300

    def ports(self) -> dict[str, int]:
        """Every port field (typed `Port` or `OptionalPort`) and its value."""
        fields = type(self).model_fields
        return {name: getattr(self, name) for name, info in fields.items() if _PORT in info.metadata}

    @model_validator(mode="after")
    def _ports_differ(self) -> Endpoints:
        used = {key: port for key, port in self.ports().items() if port}
        if len(set(used.values())) != len(used):
            raise Broken("", "the ports must all differ", used)
        return self


class Limits(_Section):
    request_timeout_ms: Positive = 120_000
    result_ttl_s: PositiveFloat = 600.0
    max_audio_seconds: PositiveFloat = 600.0
    max_text_chars: Positive = 20_000
    max_batch_items: Positive = 64
    max_message_bytes: Positive = 64 * 1024 * 1024
    #: TTS `output_path` files are written under this directory and nowhere else.
    output_dir: str = "output"
    #: queue_for_batch jobs and results survive agent restarts in one SQLite file per agent here.
    journal_dir: str = Field("~/.cache/voicebus/journal", min_length=1)
    #: Streams open at once per agent; one more is refused with "overloaded".
    max_open_streams: Positive = 64
    #: A stream nobody reads for this long is closed, and its unmade outputs cancelled.
    stream_idle_s: PositiveFloat = 60.0
    #: Outputs a stream makes ahead of its reader (in progress or ready but unread).
    stream_buffer: Positive = 4
    #: Live STT: the longest audio one stream_audio chunk may carry.
    stream_max_chunk_s: PositiveFloat = 10.0
    #: Live STT: a stream whose client hung up is closed unless a call comes this soon.
    stream_hangup_grace_s: PositiveFloat = 2.0
    #: Live STT: threads that run the streams' VAD side by side (each carries about 100
    #: streams); 0: one per core, up to 4.
    stream_vad_threads: int = Field(0, ge=0)
    #: A job for a model no live model manager holds waits this long (within its own
    #: timeout) for one to join, then gets model_unavailable.
    model_wait_ms: Positive = 30_000


class Security(_Section):
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

    @model_validator(mode="after")
    def _keys_where_curve_is_on(self) -> Security:
        needs = {"curve_enabled": ("server_secret_key_file", "authorized_clients_dir"),
                 "backend_curve_enabled": ("server_secret_key_file", "authorized_model_managers_dir")}
        for switch, keys in needs.items():
            for key in keys:
                if getattr(self, switch) and not getattr(self, key):
                    raise Broken(key, f"is required with {switch}", getattr(self, key))
        return self


class ModelManagerConfig(_Section):
    """Where a model manager connects and what it serves (docs/deploy.md)."""

    #: The agents' backend addresses ("tcp://host:port") to connect out to; empty: this
    #: host's agents (endpoints.backend_host, stt_backend_port and tts_backend_port).
    agents: TcpAddresses = ()
    #: Names of the configured models to load and serve; empty: every configured model
    #: (checked against them by `Config`).
    models: Names = ()
    #: Model managers the launcher starts on this host (one per GPU: replica i sees
    #: CUDA_VISIBLE_DEVICES=i when the host has GPUs).
    replicas: int = Field(1, ge=1, le=64)
    #: Jobs per model one model manager holds at once, queued and running; 0: twice
    #: batch_processing_config.max_batch_size, capped by max_queue_size.
    credit: int = Field(0, ge=0)
    #: On SIGTERM: no new work, and what it holds is finished within this, then DISCONNECT.
    drain_timeout_s: PositiveFloat = 60.0


class GatewayConfig(_Section):
    """The HTTP gateway (agents/gateway/): its keys, limits and the names OpenAI clients send."""

    #: API keys, one per line; with none here or in `api_keys_env`, no key is asked for.
    api_keys_file: str = ""
    #: An environment variable holding comma-separated API keys.
    api_keys_env: str = "VOICEBUS_API_KEYS"
    #: Request bodies over this get 413 without being read (OpenAI's limit is 25 MB).
    max_upload_bytes: Positive = 25 * 1024 * 1024
    #: Speech input over this many characters gets 413 (OpenAI's limit is 4096).
    max_input_chars: Positive = 4096
    #: model_pref for /v1/audio/translations when the client names an OpenAI model.
    translation_model: str = "quality"
    #: OpenAI model name -> model_pref ("" : the first configured model of the task).
    model_names: dict[str, str] = Field(default_factory=dict)
    #: OpenAI voice name -> voice pack (or mix) of the TTS model.
    voice_names: dict[str, str] = Field(default_factory=dict)


class LoggingConfig(_Section):
    #: Threshold for every process's log; the VOICEBUS_LOG_LEVEL variable, when set, wins.
    level: str = "INFO"

    @field_validator("level")
    @classmethod
    def _known_level(cls, level: str) -> str:
        if level.upper() not in LOG_LEVELS:
            raise Broken("", f"must be one of {list(LOG_LEVELS)}", level)
        return level


class ModelSpec(_Section):
    name: str = Field(min_length=1)
    engine: str
    weights: str = ""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compute_type: str = "auto"
    optional: bool = False
    #: Worker threads sharing this model's queue: >1 keeps several batches in flight.
    instances: int = Field(1, ge=1, le=16)
    #: A second copy of the model that runs long requests' units (30 s windows, text pieces)
    #: at the lowest OS priority, beside the requests that run whole (model_manager/lanes.py);
    #: "auto": on a CPU, where a unit takes seconds.
    long_lane: TrueFalseOrAuto = "auto"
    #: Extra keyword arguments for the engine's constructor (e.g. voices_dir, backend).
    options: dict[str, Any] = Field(default_factory=dict)


def _no_models(value: Any) -> Any:
    return () if value is None else _listed(value) if isinstance(value, list) else value


Specs = Annotated[tuple[ModelSpec, ...], BeforeValidator(_no_models)]


class Models(_Section):
    """`models`: the STT and TTS models, each list with its own engines."""

    stt: Specs = ()
    tts: Specs = ()

    @field_validator("stt", "tts")
    @classmethod
    def _engines_and_names(cls, specs: tuple[ModelSpec, ...], info: Any) -> tuple[ModelSpec, ...]:
        engines = STT_ENGINES if info.field_name == "stt" else TTS_ENGINES
        for i, spec in enumerate(specs):
            if spec.engine not in engines:
                raise Broken(f"{i}.engine", f"must be one of {list(engines)}", spec.engine)
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise Broken("", "model names must be unique", names)
        return specs


def _empty_when_null(value: Any) -> Any:
    return {} if value is None else value


class Config(_Section):
    batch_processing_config: Annotated[
        BatchPolicy, _CheckedBy(BatchSettings, _BatchRules.policy, dataclasses.asdict)
    ] = _BATCH
    endpoints: Endpoints = Endpoints()
    limits: Limits = Limits()
    #: The `models` section (`models` itself is the method below).
    catalog: Annotated[Models, BeforeValidator(_empty_when_null)] = Field(Models(), alias="models")
    logging: LoggingConfig = LoggingConfig()
    security: Security = Security()
    gateway: GatewayConfig = GatewayConfig()
    model_manager: Annotated[ModelManagerConfig, BeforeValidator(_empty_when_null)] = ModelManagerConfig()

    @property
    def stt_models(self) -> tuple[ModelSpec, ...]:
        return self.catalog.stt

    @property
    def tts_models(self) -> tuple[ModelSpec, ...]:
        return self.catalog.tts

    def models(self, task: str) -> tuple[ModelSpec, ...]:
        return self.stt_models if task == "stt" else self.tts_models

    @model_validator(mode="after")
    def _served_models_configured(self) -> Config:
        names = {spec.name for spec in (*self.stt_models, *self.tts_models)}
        for i, name in enumerate(self.model_manager.models):
            if name not in names:
                raise Broken(f"model_manager.models.{i}", f"must name a configured model {sorted(names)}",
                             name)
        return self


# --- loading ------------------------------------------------------------------------------


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
    try:
        return Config.model_validate(dict(raw))
    except ValidationError as exc:
        raise _config_error(exc) from None


#: pydantic's error types, said the way this file's readers think of them.
_RULES = {
    "missing": "required",
    "int_type": "expected an integer",
    "float_type": "expected a number",
    "bool_type": "expected true or false",
    "string_type": "expected a string",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "tuple_type": "must be a list",
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than_equal": "must be <= {le}",
    "string_too_short": "must not be empty",
    "literal_error": "must be one of {expected}",
}


def _config_error(exc: ValidationError) -> ConfigError:
    """The first error, as "dotted.key: rule, got value"."""
    error = exc.errors(include_url=False)[0]
    loc = [str(part) for part in error["loc"]]
    context = error.get("ctx") or {}
    cause = context.get("error")
    if isinstance(cause, Broken):
        loc += cause.key.split(".") if cause.key else []
        rule, value = cause.rule, cause.value
    else:
        rule, value = _RULES.get(error["type"], error["msg"]).format(**context), error["input"]
    where = ".".join(loc) or "(top level)"
    if error["type"] == "missing":
        return ConfigError(f"{where}: {rule}")
    return ConfigError(f"{where}: {rule}, got {value!r}")
