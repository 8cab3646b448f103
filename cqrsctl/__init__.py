"""cqrsctl: an event store and CQRS toolkit for Python, on SQLite or PostgreSQL."""

from __future__ import annotations

import logging as _logging
from importlib import metadata as _metadata

from .errors import (
    ConcurrencyError,
    CqrsError,
    DomainError,
    NotFoundError,
    ValidationError,
)
from .store import ANY, EXISTS, NO_STREAM, NewEvent, Store, StoredEvent, open_store

# The library logs under "cqrsctl.*" and leaves output to the application (the CLI installs
# a handler: see cqrsctl.cli.logs); without one, nothing is printed.
_logging.getLogger(__name__).addHandler(_logging.NullHandler())

try:  # the one place the version is written is pyproject.toml
    __version__ = _metadata.version("cqrsctl")
except _metadata.PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "ANY",
    "EXISTS",
    "NO_STREAM",
    "ConcurrencyError",
    "CqrsError",
    "DomainError",
    "NewEvent",
    "NotFoundError",
    "Store",
    "StoredEvent",
    "ValidationError",
    "open_store",
]
