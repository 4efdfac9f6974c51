"""The per-request options every action shares, checked in one place.

`request_id` (echoed back), `priority` ("interactive" | "bulk"), `timeout_ms` (shortens the
server's limits.request_timeout_ms, never lengthens it; at least 1 ms), `model_pref`, and
`protocol` (the client protocol version the client speaks; only `PROTOCOL_VERSION` is served).
"""

from __future__ import annotations

import math
from typing import Any

from agents.services import valid_unicode
from model_manager.batcher import BULK, INTERACTIVE
from model_manager.errors import INVALID_FIELD, MISSING_FIELD, BusError
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


def check_protocol(message: dict[str, Any]) -> None:
    version = message.get("protocol")
    if version is not None and (isinstance(version, bool) or version != PROTOCOL_VERSION):
        raise BusError(INVALID_FIELD, f"protocol {version!r:.50} is not served; this agent speaks "
                                      f"protocol {PROTOCOL_VERSION}")


def check_options(fields: dict[str, Any]) -> None:
    """Validate the per-request options every action shares (raises BusError)."""
    request_id = fields.get("request_id")
    if request_id is not None and not isinstance(request_id, _ECHOABLE):
        raise BusError(INVALID_FIELD, "request_id must be a string or a number")
    priority = fields.get("priority")
    if priority is not None and (not isinstance(priority, str) or priority not in PRIORITIES):
        raise BusError(INVALID_FIELD, f"priority must be one of {sorted(PRIORITIES)}, got {priority!r}")
    timeout_ms(fields)
    model_pref = fields.get("model_pref")
    if model_pref is not None and not valid_unicode(model_pref):
        raise BusError(INVALID_FIELD, f"model_pref must be a string, got {model_pref!r}")



def timeout_ms(fields: dict[str, Any]) -> int | None:
    """The client's timeout_ms as whole milliseconds; under 1 ms is refused, not rounded
    to 0 (which would mean "no timeout of its own")."""
    value = fields.get("timeout_ms")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value < math.inf:
        raise BusError(INVALID_FIELD, f"timeout_ms must be a number of at least 1, got {value!r:.100}")
    return int(value)


def effective_timeout_ms(fields: dict[str, Any], limit_ms: int) -> int:
    """The request's timeout: its own `timeout_ms` can shorten the server's, never lengthen it."""
    return min(timeout_ms(fields) or limit_ms, limit_ms)


def priority(fields: dict[str, Any], default: int) -> int:
    return PRIORITIES.get(fields.get("priority"), default)
