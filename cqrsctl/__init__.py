"""cqrsctl: an event store and CQRS toolkit for Python, on SQLite or PostgreSQL."""

from __future__ import annotations

from .errors import (
    ConcurrencyError,
    CqrsError,
    DomainError,
    NotFoundError,
    ValidationError,
)
from .store import ANY, EXISTS, NO_STREAM, NewEvent, Store, StoredEvent, open_store

__version__ = "0.1.0"

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
