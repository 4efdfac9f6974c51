"""The per-request options every action shares, checked in one place.

`request_id` (echoed back), `priority` ("interactive" | "bulk"), `timeout_ms` (shortens the
server's limits.request_timeout_ms, never lengthens it; at least 1 ms), `model_pref`, and
`protocol` (the client protocol version the client speaks; only `PROTOCOL_VERSION` is served).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StrictBytes,
    StrictFloat,
    StrictInt,
    StrictStr,
)

from model_manager.batcher import BULK, INTERACTIVE
from model_manager.errors import INVALID_FIELD, MISSING_FIELD, BusError
from model_manager.fields import Messages, Utf8Str, checked, valid_unicode
from model_manager.protocol import PROTOCOL_VERSION

PRIORITIES = {"interactive": INTERACTIVE, "bulk": BULK}

# Scalars every encoding carries back unchanged; anything else is not echoed.
_ECHOABLE = (str, int, float, bytes)


def required(message: dict[str, Any], key: str) -> Any:
    if message.get(key) is None:
        raise BusError(MISSING_FIELD, f"{key} is required")
    return message[key]


def echoable(value: Any, default: Any = None) -> Any:
    """`value` if it can be echoed as a request_id, else `default`."""
    return value if isinstance(value, _ECHOABLE) else default


def request_key(value: Any) -> str:
    """A request_id as the key of a queued result or a stream; BusError for one that cannot
    be a key (not a scalar, or a string with lone surrogates, which UTF-8 cannot store)."""
    key = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    if not isinstance(value, _ECHOABLE) or not valid_unicode(key):
        raise BusError(INVALID_FIELD, "request_id must be a string or a number")
    return key


# --- the options every action shares, as typed records --------------------------------------

#: The client protocol versions served: this one only.
Protocol = Annotated[StrictInt | StrictFloat, Field(ge=PROTOCOL_VERSION, le=PROTOCOL_VERSION)]
#: A request_id: a scalar every encoding carries back unchanged (a bool is an int here).
RequestId = StrictStr | StrictInt | StrictFloat | StrictBytes | StrictBool
#: A timeout in ms: a number of at least 1 (never 0, which would mean "no timeout of its
#: own"), kept as whole milliseconds.
TimeoutMs = Annotated[
    Annotated[StrictInt | Annotated[float, Strict(), Field(allow_inf_nan=False)], Field(ge=1)],
    AfterValidator(int),
]


class ProtocolOption(BaseModel):
    """`protocol`: the version of the client protocol the client speaks, checked for every action."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    protocol: Protocol | None = None


class RequestOptions(ProtocolOption):
    """The options every work action and item shares (see the module docstring), made by
    `check_options` at intake, where the first bad one, in this order, is the error; a job is
    made from the fields intake kept, which give the same record again."""

    request_id: RequestId | None = None
    priority: Literal["interactive", "bulk"] | None = None
    timeout_ms: TimeoutMs | None = None
    model_pref: Utf8Str | None = None

    def priority_level(self, default: int) -> int:
        return PRIORITIES[self.priority] if self.priority is not None else default

    def timeout_within(self, limit_ms: int) -> int:
        """Its own `timeout_ms` can shorten the server's limit, never lengthen it."""
        return min(self.timeout_ms or limit_ms, limit_ms)


#: The invalid_field message of each option, from the value the client sent.
OPTION_MESSAGES: Messages = {
    "protocol": lambda value: f"protocol {value!r:.50} is not served; this agent speaks "
                              f"protocol {PROTOCOL_VERSION}",
    "request_id": lambda value: "request_id must be a string or a number",
    "priority": lambda value: f"priority must be one of {sorted(PRIORITIES)}, got {value!r:.50}",
    "timeout_ms": lambda value: f"timeout_ms must be a number of at least 1, got {value!r:.100}",
    "model_pref": lambda value: f"model_pref must be a string, got {value!r:.50}",
}


def check_protocol(message: dict[str, Any]) -> None:
    """BusError(invalid_field) unless the message's `protocol`, if any, is served."""
    checked(ProtocolOption, message, OPTION_MESSAGES)


def check_options(fields: dict[str, Any]) -> RequestOptions:
    """The shared options of a work request or item, or BusError(invalid_field) naming the first
    bad one."""
    return checked(RequestOptions, fields, OPTION_MESSAGES)
