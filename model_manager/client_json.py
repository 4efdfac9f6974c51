"""Client JSON parsed by orjson, with the standard library's results and errors.

A 4 s clip sent as a JSON list is 64,000 numbers: `json` takes about five times as long as
orjson to read them. But orjson reads a few things otherwise than `json`, and what a client
gets back must not change, so `loads` leaves these frames to `json`:

- what orjson refuses: malformed JSON (the error then is `json`'s, word for word), and what
  only `json` accepts: NaN, Infinity and numbers past the double range (floats, which the
  field checks then refuse, e.g. `invalid_audio` for such a sample), lone surrogate escapes
  ("\\ud800", which the field checks refuse too), UTF-16 and UTF-32 text;
- integers beyond 64 bits, which orjson makes floats and `json` keeps exact;
- nesting deeper than `DEEPEST_CHECKED`: orjson takes 1023 levels, `json` as many as the
  interpreter's recursion limit less the caller's stack allows, a number this module cannot
  know; it lies well past `DEEPEST_CHECKED`.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

#: orjson keeps integers in [-2**63, 2**64 - 1]; past them it makes floats at least this large.
_FLOAT_FROM_BIG_INT = 2.0**63
#: Containers nested deeper than this are read by `json`, whose own limit lies well past it.
DEEPEST_CHECKED = 500


def loads(frame: bytes) -> Any:
    """`json.loads(frame)`, faster: the same value, or the same exception."""
    try:
        value = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return json.loads(frame)
    return value if _as_json_reads_it(value) else json.loads(frame)


def _as_json_reads_it(value: Any) -> bool:
    """Whether orjson's `value` is what `json` makes of the same text: nothing nested past
    DEEPEST_CHECKED and no float as large as orjson makes of an integer beyond 64 bits. A
    large float that was one in the text too is only a false alarm: `json` reads it the same."""
    pending: list[tuple[Any, int]] = [([value], 0)]
    while pending:
        container, depth = pending.pop()
        if depth > DEEPEST_CHECKED:
            return False
        items = container.values() if isinstance(container, dict) else container
        try:
            # Numbers only (a list of samples): one pass in C, and the norm bounds the largest.
            norm: float | None = math.hypot(*items)
        except TypeError:  # not numbers only: each item in turn
            norm = None
        if norm is not None:
            if norm >= _FLOAT_FROM_BIG_INT:
                return False
            continue
        for item in items:
            if isinstance(item, (dict, list)):
                pending.append((item, depth + 1))
            elif isinstance(item, float) and abs(item) >= _FLOAT_FROM_BIG_INT:
                return False
    return True
