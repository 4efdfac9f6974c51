"""Wire encodings, as written down in docs/protocol.md.

Client <-> agent: one frame per message (a zmq REQ socket adds and strips the empty
delimiter). The body is either a JSON object (UTF-8, first byte "{") or a msgpack map. The
reply uses the encoding of the request. `decode_request` never raises anything but a
`BusError(BAD_REQUEST)`, so garbage on the socket costs one error reply and nothing more.

Agent <-> model manager: `INTERNAL_VERSION` then one msgpack body, numpy arrays packed
losslessly with `pack`/`unpack`.
"""

from __future__ import annotations

import base64
import json
import math
import re
from enum import Enum
from typing import Any

import msgpack
import numpy as np
import orjson

from model_manager import client_json
from model_manager.errors import BAD_REQUEST, BusError

PROTOCOL_VERSION = 1
INTERNAL_VERSION = b"VBMM1"
#: Agents ping the model manager this often. Each side counts the other as gone after
#: LIVENESS_INTERVALS intervals without a sign of life (docs/protocol.md §6).
PING_INTERVAL_S = 1.0
LIVENESS_INTERVALS = 3


class Encoding(str, Enum):
    JSON = "json"
    MSGPACK = "msgpack"


# JSON's whitespace, then an object; matched in place, without copying a large frame.
_JSON_OBJECT_START = re.compile(rb"[ \t\r\n]*\{")


def sniff_encoding(frame: bytes) -> Encoding:
    """The encoding a frame is in, and so the one to answer in, without decoding it."""
    return Encoding.JSON if _JSON_OBJECT_START.match(frame) else Encoding.MSGPACK


def decode_request(frame: bytes) -> tuple[dict[str, Any], Encoding]:
    """Parse a client frame into a dict and the encoding to answer in; raises only
    BusError(BAD_REQUEST)."""
    if sniff_encoding(frame) is Encoding.JSON:
        try:
            message = client_json.loads(frame)
        except (UnicodeDecodeError, ValueError) as exc:
            raise BusError(BAD_REQUEST, f"malformed JSON: {exc}") from None
        except RecursionError:  # "[[[[..." nested deeper than the parser goes
            raise BusError(BAD_REQUEST, "malformed JSON: nested too deeply") from None
        encoding = Encoding.JSON
    else:
        try:
            message = msgpack.unpackb(frame, raw=False, strict_map_key=False)
        except Exception as exc:  # msgpack raises several unrelated exception types
            raise BusError(
                BAD_REQUEST, f"frame is neither a JSON object nor valid msgpack ({type(exc).__name__})"
            ) from None
        encoding = Encoding.MSGPACK
    if not isinstance(message, dict):
        raise BusError(BAD_REQUEST, f"a request must be a map/object, got {type(message).__name__}")
    return message, encoding


def encode_reply(reply: dict[str, Any], encoding: Encoding) -> bytes:
    if encoding is Encoding.JSON:
        try:
            # Passed through to `default`, and so refused: the standard library writes neither.
            as_stdlib = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
            return orjson.dumps(reply, default=_json_safe, option=as_stdlib)
        except orjson.JSONEncodeError:
            # What orjson leaves out (keys that are not strings, integers beyond 64 bits, lone
            # surrogates, values _json_safe cannot make plain) goes the standard library's way.
            return json.dumps(_json_safe(reply), separators=(",", ":")).encode()
    return msgpack.packb(reply, use_bin_type=True, default=_msgpack_default)


def error_reply(error: BusError, request_id: Any = None) -> dict[str, Any]:
    reply: dict[str, Any] = {"status": "error", "error": error.to_wire()}
    if request_id is not None:
        reply["request_id"] = request_id
    return reply


def _json_safe(value: Any) -> Any:
    # JSON has no NaN/inf and no bytes. Binary fields (TTS audio) travel as base64 strings;
    # replies never carry NaN, but a stray one must not produce invalid JSON for the client.
    # Also orjson's `default`, for what it does not take itself (bytes, numpy scalars).
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    return value


def _msgpack_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tobytes()
    raise TypeError(f"cannot encode {type(value).__name__}")


# --- internal: agent <-> model manager -------------------------------------------------

_ND = "__ndarray__"


def _pack_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        value = np.ascontiguousarray(value)
        return {_ND: True, "dtype": value.dtype.str, "shape": list(value.shape), "data": value.tobytes()}
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot pack {type(value).__name__}")


def _unpack_hook(obj: dict[str, Any]) -> Any:
    if obj.get(_ND) is True:
        return np.frombuffer(obj["data"], dtype=np.dtype(obj["dtype"])).reshape(obj["shape"])
    return obj


def pack(message: dict[str, Any]) -> bytes:
    return msgpack.packb(message, use_bin_type=True, default=_pack_default)


def unpack(body: bytes) -> dict[str, Any]:
    return msgpack.unpackb(body, raw=False, object_hook=_unpack_hook, strict_map_key=False)
