"""Time as the command line and the files speak it: durations (`90s`, `15m`, `7d`), ISO 8601
timestamps, and ages shown to people. One syntax everywhere, parsed and printed here."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from .errors import UsageError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_MAX_DURATION = timedelta(days=36_500)


def parse_duration(text: str, *, zero: bool = False) -> timedelta:
    """`90s`, `15m`, `12h`, `7d`, `2w` (or plain seconds) as a timedelta: positive (or zero
    when `zero`), finite, at most 100 years."""
    t = text.strip().lower()
    number, unit = (t[:-1], _UNITS[t[-1]]) if t and t[-1] in _UNITS else (t, 1)
    try:
        seconds = float(number) * unit if number.isascii() else float("nan")
    except ValueError:
        seconds = float("nan")
    if not math.isfinite(seconds):
        raise UsageError(f"invalid duration {text!r}: use e.g. 90s, 15m, 12h, 7d")
    if seconds < 0 or (seconds == 0 and not zero):
        raise UsageError(f"invalid duration {text!r}: it must be positive")
    if seconds > _MAX_DURATION.total_seconds():
        raise UsageError(f"invalid duration {text!r}: at most 100 years")
    return timedelta(seconds=seconds)


def parse_iso(text: str, *, naive_is_utc: bool = True) -> datetime:
    """An ISO 8601 timestamp (`Z` for UTC accepted) as an aware datetime in UTC. Without a
    time zone it is UTC, or a ValueError when not `naive_is_utc`; so is one that UTC
    cannot hold (year 1 east of Greenwich)."""
    at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if at.tzinfo is None:
        if not naive_is_utc:
            raise ValueError("no time zone")
        return at.replace(tzinfo=UTC)
    try:
        return at.astimezone(UTC)
    except OverflowError:
        raise ValueError("out of range in UTC") from None


def parse_timestamp(text: str, option: str) -> datetime:
    """`parse_iso` for a command-line option: a bad value is a usage error naming `option`."""
    try:
        return parse_iso(text)
    except ValueError as exc:
        if str(exc) == "out of range in UTC":
            raise UsageError(f"{option} is out of range in UTC: {text!r}") from None
        raise UsageError(f"{option} is not an ISO 8601 timestamp: {text!r}") from None


def age(seconds: float | None) -> str:
    """A duration for people, in its largest unit with one decimal: `42.0s`, `1.5h`, `3.0d`."""
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.1f}s"
