"""Strict types for the records that check a client's fields, and the one way a record's
refusal becomes the `BusError` a client reads, naming the field.

Strict, as the bus has always been: a bool is not a number, a float is not an integer, and
nothing is read out of a string. A str must be one UTF-8 can carry: JSON's "\\ud800" escapes
make lone surrogates, which would fail later, on the internal wire or in the journal, rather
than as a clear error at intake. A number must be finite (NaN, infinities and integers too
big for a float are refused).

The agents' records (agents/options.py, agents/items.py) and the engines' own checks build on
these, so that each rule is written once and the agent and the engine cannot disagree.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, StrictFloat, StrictInt, StrictStr, ValidationError

from model_manager.errors import INVALID_FIELD, MISSING_FIELD, BusError


def valid_unicode(value: Any) -> bool:
    """A str that UTF-8 can carry (see the module docstring)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _utf8(value: str) -> str:
    if not valid_unicode(value):
        raise ValueError("not UTF-8")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("blank")
    return value


def _finite(number: int | float) -> float:
    # JSON integers are unbounded, and float() of a huge one overflows.
    try:
        value = float(number)
    except OverflowError:
        raise ValueError("too large for a float") from None
    if not math.isfinite(value):
        raise ValueError("not finite")
    return value


#: A string UTF-8 can carry.
Utf8Str = Annotated[StrictStr, AfterValidator(_utf8)]
#: A string with something besides whitespace in it.
NonBlankStr = Annotated[Utf8Str, AfterValidator(_not_blank)]
#: A finite number (an int or a float, never a bool), as a float. Bounds go on top of it:
#: Annotated[FiniteNumber, Field(ge=0, le=1)].
FiniteNumber = Annotated[StrictInt | StrictFloat, AfterValidator(_finite)]

#: The invalid_field message of each field of a record, made from the value the client sent.
Messages = Mapping[str, Callable[[Any], str]]


def string_message(name: str) -> Callable[[Any], str]:
    """The message for a bad `Utf8Str` field `name`: its type, or that its text is not UTF-8."""
    def message(value: Any) -> str:
        if isinstance(value, str):
            return f"{name} must be UTF-8 text, got a string with lone surrogates"
        return f"{name} must be a string, got {type(value).__name__}"
    return message

Record = TypeVar("Record", bound=BaseModel)


def checked(record: type[Record], fields: Mapping[str, Any], messages: Messages,
            codes: Mapping[str, str] | None = None) -> Record:
    """`fields` as a `record`, or BusError for its first bad field in the record's order:
    missing_field "<field> is required" for a required field that is absent or null, else
    the field's code from `codes` (invalid_field when it has none) with its message from
    `messages`."""
    try:
        return record.model_validate(fields if isinstance(fields, dict) else dict(fields))
    except ValidationError as exc:
        key = str(exc.errors(include_url=False)[0]["loc"][0])
    if fields.get(key) is None and record.model_fields[key].is_required():
        raise BusError(MISSING_FIELD, f"{key} is required")
    raise BusError((codes or {}).get(key, INVALID_FIELD), messages[key](fields.get(key)))
