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


# Append after the head of stream %(s)s when the head is within [%(lo)s, %(hi)s] (the
# expected version); returns the head and the new positions (none when the check failed).
# Arrays go in binary: psycopg quotes every element of a text array with regular expressions.
_APPEND = (
    "WITH head AS (SELECT coalesce(max(stream_version), 0) AS v FROM events WHERE stream_id = %(s)s),"
    " ins AS (INSERT INTO events (stream_id, stream_version, event_id, event_type, schema_version, category,"
    " data, metadata, recorded_at)"
    " SELECT %(s)s, head.v + x.o, x.i, x.t, x.sv, %(c)s, x.d::jsonb, x.m::jsonb, %(r)s FROM head, {source}"
    " WHERE head.v BETWEEN %(lo)s AND %(hi)s ORDER BY x.o RETURNING global_position)"
    " SELECT (SELECT v FROM head), array(SELECT global_position FROM ins ORDER BY 1)"
)
_APPEND_ONE = _APPEND.format(
    source="(SELECT %(i)s::text, %(t)s::text, %(sv)s::int, %(d)s::text, %(m)s::text, 1::bigint) AS x(i, t, sv, d, m, o)"
)
_APPEND_MANY = _APPEND.format(
    source="unnest(%(i)b::text[], %(t)b::text[], %(sv)b::int[], %(d)b::text[], %(m)b::text[])"
    " WITH ORDINALITY AS x(i, t, sv, d, m, o)"
)
