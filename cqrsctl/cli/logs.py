"""The library's log on stderr: `text` for people (a UTC timestamp, then the message) or
`json` for machines (one object per line). Every message and field is scrubbed of the
secrets of the URLs in play before it is written."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from .runtime import safe

FORMATS = ("text", "json")
ROOT = "cqrsctl"

# What every LogRecord carries; anything else came in through `extra=` and is a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def _stamp(record: logging.LogRecord) -> str:
    at = datetime.fromtimestamp(record.created, UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


class _Text(logging.Formatter):
    def __init__(self, scrub: Callable[[str], str]) -> None:
        super().__init__()
        self.scrub = scrub

    def format(self, record: logging.LogRecord) -> str:
        # No control character of the data reaches a terminal.
        text = f"{_stamp(record)} {safe(self.scrub(record.getMessage()))}"
        if record.exc_info:
            text += "\n" + self.scrub(self.formatException(record.exc_info))
        return text


class _Json(logging.Formatter):
    def __init__(self, scrub: Callable[[str], str]) -> None:
        super().__init__()
        self.scrub = scrub

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _stamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": self.scrub(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry:
                entry[key] = self.scrub(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["traceback"] = self.scrub(self.formatException(record.exc_info))
        return orjson.dumps(entry, default=lambda v: self.scrub(str(v))).decode()


class _Stderr(logging.Handler):
    """Writes to the stderr of the moment (tests swap it), not the one at install time."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


_installed: logging.Handler | None = None


def install(fmt: str, *, quiet: bool, verbose: bool, scrub: Callable[[str], str]) -> None:
    """Send the library's log to stderr in `fmt`: warnings and errors by default, info too
    with `verbose`, errors only when `quiet`. Replaces what an earlier call installed."""
    global _installed
    logger = logging.getLogger(ROOT)
    if _installed is not None:
        logger.removeHandler(_installed)
    handler = _Stderr()
    handler.setFormatter(_Json(scrub) if fmt == "json" else _Text(scrub))
    logger.addHandler(handler)
    logger.setLevel(logging.ERROR if quiet else logging.INFO if verbose else logging.WARNING)
    logger.propagate = False  # the command line owns the process's output
    _installed = handler


def show_info() -> None:
    """For commands whose log is their output (the daemon): info too, unless quiet."""
    logger = logging.getLogger(ROOT)
    if logger.level < logging.ERROR:
        logger.setLevel(min(logger.level, logging.INFO))
