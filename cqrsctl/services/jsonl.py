"""JSON Lines input (dispatch batches, append batches, imports): one object per line,
parsed strictly and validated by one pydantic model per kind of line.

Strict means what a reader of the file would expect: a duplicate key is an error (not
"the last one wins"), an integer keeps its exact value or is refused (never rounded to a
float), NaN and infinities are refused, and a line holds only the keys its model knows:
a misspelt `"idd"` or `"expected_versoin"` is an error naming the line and the key.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from typing import Annotated, Any, TypeVar

import pydantic
from pydantic import AfterValidator, Field

from ..errors import ValidationError
from ..store.base import validate_event_type, validate_stream_id

# What the stores can hold exactly: orjson writes integers in [-2**63, 2**64).
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


class _Refused(ValueError):
    pass


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Refused(f"duplicate key {key!r}")
        out[key] = value
    return out


def _int(text: str) -> int:
    value = int(text)
    if not _INT_MIN <= value <= _INT_MAX:
        raise _Refused(f"integer {text[:30]}{'…' if len(text) > 30 else ''} does not fit in 64 bits")
    return value


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"number {text[:30]} is out of range")
    return value


def _constant(text: str) -> Any:
    raise _Refused(f"{text} is not JSON")


_DECODER = json.JSONDecoder(
    object_pairs_hook=_object, parse_int=_int, parse_float=_float, parse_constant=_constant
)


def loads(text: str | bytes) -> Any:
    """Parse one JSON document strictly (see the module's docstring); ValueError says why not."""
    if isinstance(text, bytes):
        try:
            text = text.decode()
        except UnicodeDecodeError as exc:
            raise ValueError(f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        return _DECODER.decode(text)
    except _Refused:
        raise
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc.msg} at column {exc.colno}") from None
    except RecursionError:
        raise ValueError("invalid JSON: nested too deep") from None


def json_objects(lines: Iterable[bytes]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; a line that is not a JSON object
    raises ValidationError naming its number."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = loads(line)
        except ValueError as exc:
            raise ValidationError(f"line {number}: {exc}") from None
        if not isinstance(d, dict):
            raise ValidationError(f"line {number}: expected a JSON object")
        yield number, d


M = TypeVar("M", bound=pydantic.BaseModel)


def describe(exc: pydantic.ValidationError) -> str:
    """The first problem of a pydantic error as one phrase naming the field."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "the line"
    if err["type"] == "extra_forbidden":
        return f'unknown key "{where}"'
    if err["type"] == "missing":
        return f'missing "{where}"'
    message = str(err["msg"]).removeprefix("Value error, ")
    return f'"{where}": {message}'


def validated(model: type[M], lines: Iterable[bytes]) -> Iterator[tuple[int, M]]:
    """(line number, model) for each line; the first bad line raises ValidationError
    naming its number and field."""
    for number, d in json_objects(lines):
        try:
            yield number, model.model_validate(d)
        except pydantic.ValidationError as exc:
            raise ValidationError(f"line {number}: {describe(exc)}") from None


# -- the fields lines share (the same rules as the store applies to an append) --------------


def _stream_id(value: str) -> str:
    try:
        validate_stream_id(value)
    except ValidationError as exc:
        raise ValueError(str(exc)) from None
    return value


def _event_type(value: str) -> str:
    try:
        validate_event_type(value)
    except ValidationError as exc:
        raise ValueError(str(exc)) from None
    return value


def _identifier(value: str) -> str:
    if not value or len(value) > 200 or any(ord(c) < 32 for c in value):
        raise ValueError("must be 1 to 200 characters without control characters")
    return value


StreamId = Annotated[str, AfterValidator(_stream_id)]
EventType = Annotated[str, AfterValidator(_event_type)]
Identifier = Annotated[str, AfterValidator(_identifier)]
Position = Annotated[int, Field(ge=1, le=2**63 - 1)]
SchemaVersion = Annotated[int, Field(ge=1, le=2**31 - 1)]


class Line(pydantic.BaseModel):
    """Base of every JSONL line model: unknown keys and loose types are refused."""

    model_config = pydantic.ConfigDict(extra="forbid", strict=True, frozen=True)
