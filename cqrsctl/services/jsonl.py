"""JSON Lines input (dispatch batches, append batches, imports): one object per line."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from ..errors import ValidationError


def json_objects(lines: Iterable[bytes]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; a line that is not a JSON object
    raises ValidationError naming its number."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ValidationError(f"line {number}: invalid JSON: {exc}") from None
        if not isinstance(d, dict):
            raise ValidationError(f"line {number}: expected a JSON object")
        yield number, d
