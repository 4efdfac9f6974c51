"""Error codes shared by every part of the bus.

Every failure a client can see is a `BusError` with a stable machine-readable `code` and a
human-readable `message`. docs/protocol.md lists the codes; keep the two in step.
"""

from __future__ import annotations

from typing import Any

# Request problems: the client can fix them.
BAD_REQUEST = "bad_request"  # undecodable frame, not a map, malformed JSON/msgpack
UNKNOWN_ACTION = "unknown_action"
MISSING_FIELD = "missing_field"
INVALID_FIELD = "invalid_field"  # wrong type or out-of-range value
INVALID_AUDIO = "invalid_audio"  # empty, NaN/inf, wrong dtype, bad sample rate
AUDIO_TOO_LONG = "audio_too_long"
TEXT_TOO_LONG = "text_too_long"
TOO_MANY_ITEMS = "too_many_items"
UNKNOWN_MODEL = "unknown_model"
UNKNOWN_VOICE = "unknown_voice"
NOT_FOUND = "not_found"  # get_result for an unknown or expired request_id
DUPLICATE_REQUEST_ID = "duplicate_request_id"
CANCELLED = "cancelled"  # its client cancelled it (the `cancel` action)
MESSAGE_TOO_LARGE = "message_too_large"  # a frame over limits.max_message_bytes

# Server problems: retry later or elsewhere.
OVERLOADED = "overloaded"
TIMEOUT = "timeout"
SHUTTING_DOWN = "shutting_down"
BUS_UNAVAILABLE = "bus_unavailable"  # client side: no agent answers at the address
NO_REPLY = "no_reply"  # client side: nothing came back within the timeout, after every retry
MODEL_UNAVAILABLE = "model_unavailable"  # the model manager is not reachable or not ready
INFERENCE_FAILED = "inference_failed"
OUT_OF_MEMORY = "out_of_memory"
INTERNAL = "internal_error"

#: Codes that mean "this was not run": a client may send the same request again (later).
RETRYABLE = frozenset({OVERLOADED, MODEL_UNAVAILABLE, SHUTTING_DOWN})


class BusError(Exception):
    """A failure with a code from this module, safe to send to a client as-is."""

    def __init__(self, code: str, message: str, retry_after_ms: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        #: For "overloaded": about when the queue should have room again.
        self.retry_after_ms = retry_after_ms

    def __reduce__(self) -> tuple[type[BusError], tuple[str, str, int | None]]:
        # Pickled across processes (agents/intake.py) with its fields, not its str().
        return (BusError, (self.code, self.message, self.retry_after_ms))

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.retry_after_ms is not None:
            wire["retry_after_ms"] = self.retry_after_ms
        return wire


#: An internal_error's message is cut to this many characters: a cause, not a dump.
INTERNAL_MESSAGE_CHARS = 500


def internal_error(exc: BaseException, context: str = "") -> BusError:
    """The answer to a bug: `internal_error` with its cause (the exception's type and text),
    after `context` where that says more ("the reply could not be encoded")."""
    cause = f"{type(exc).__name__}: {exc}"
    return BusError(INTERNAL, (f"{context}: {cause}" if context else cause)[:INTERNAL_MESSAGE_CHARS])
