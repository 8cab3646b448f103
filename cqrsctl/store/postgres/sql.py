"""What the PostgreSQL modules share: event rows, identifiers, lock keys, conflicts."""

from __future__ import annotations

import re
import zlib
from typing import Any

import orjson
import psycopg

from ...errors import ConflictError
from ..base import StoredEvent, stored_event
from ..statements import POSTGRES as Q

_EVENT_COLUMNS = Q.event_columns

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def _lock_key(name: str) -> int:
    return zlib.crc32(name.encode()) - 2**31


def _event(row: tuple[Any, ...]) -> StoredEvent:
    return stored_event(*row[:6], orjson.loads(row[6]), orjson.loads(row[7]), row[8])


# What PostgreSQL raises when it undoes a transaction to let another one go on; the whole
# transaction is gone (ours to run again), whatever statement met it.
_CONFLICTS = (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected)


def _conflict(exc: psycopg.Error) -> ConflictError:
    return ConflictError(f"postgresql: {' '.join(str(exc).split())}")


def _q(name: str) -> str:
    return f'"{name}"'
