"""The SQL both backends share, written once and rendered for each dialect at import.

Statements are written in SQLite's notation with two marks for PostgreSQL's casts:

- `?` is a parameter (`%s` on PostgreSQL);
- `?{json}` is a parameter holding JSON text (`%s::jsonb`: the column is jsonb there);
- `col{text}` reads a JSON column as text (`col::text`: orjson decodes text faster than
  psycopg's jsonb loader, and SQLite keeps JSON as text anyway).

A backend renders them once, as module constants (`SQLITE`, `POSTGRES`), so a statement
costs nothing per call. What the dialects really do differently stays in each backend,
side by side: claims and locks, NOTIFY, array parameters against `IN (…)` lists,
timestamps computed by the database's clock, and how an insert returns its key.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from .base import OUTBOX_COLUMNS

# The columns every backend reads events, outbox rows, sagas and deadlines in (the
# backends' row builders index them in this order).
EVENT_COLUMNS = (
    "global_position, stream_id, stream_version, event_id, event_type, "
    "schema_version, data{text}, metadata{text}, recorded_at"
)
SNAPSHOT_COLUMNS = "stream_id, aggregate_type, version, schema_version, state, taken_at"
SAGA_COLUMNS = (
    "saga_id, saga_type, status, current_step, steps, results, compensations, state,"
    " correlation_id, error_message, created_at, updated_at, version"
)
DEADLINE_COLUMNS = "deadline_id, saga_id, name, due_at, payload, status, fired_at"


class Statements:
    """The shared statements, rendered for one dialect (see the module's notes)."""

    # -- events --------------------------------------------------------------------------
    event_columns = EVENT_COLUMNS
    stream_version = "SELECT max(stream_version) FROM events WHERE stream_id = ?"
    read_stream = f"SELECT {EVENT_COLUMNS} FROM events WHERE "
    read_stream_data = (
        "SELECT global_position, stream_version, event_type, schema_version, data{text} FROM events WHERE "
    )
    read_all = f"SELECT {EVENT_COLUMNS} FROM events WHERE global_position > ?"
    # A stream's events from a version on, up to a version, recorded up to a time.
    stream_from = "stream_id = ? AND stream_version >= ?"
    stream_to = " AND stream_version <= ?"
    stream_as_of = " AND recorded_at <= ?"

    # -- what projections read (tracking) -------------------------------------------------
    # A page of events as tuples (see EventTuple): bare rows stop after data, lean rows
    # after the schema version (see Tracking.scan).
    scan_bare = (
        "SELECT global_position, stream_id, event_type, data{text} FROM events WHERE global_position > ?"
    )
    scan_lean = (
        "SELECT global_position, stream_id, event_type, data{text}, stream_version, schema_version"
        " FROM events WHERE global_position > ?"
    )
    scan = (
        "SELECT global_position, stream_id, event_type, data{text}, stream_version, schema_version,"
        " metadata{text}, recorded_at, event_id FROM events WHERE global_position > ?"
    )
    # The window runs over three narrow columns; only the chosen rows are joined back for data.
    sample = (
        "SELECT e.global_position, e.stream_id, e.event_type, e.data{text}, e.stream_version, e.schema_version, s.n"
        " FROM (SELECT global_position,"
        " row_number() OVER (PARTITION BY event_type, schema_version ORDER BY global_position) AS rn,"
        " count(*) OVER (PARTITION BY event_type, schema_version) AS n FROM events) s"
        " JOIN events e ON e.global_position = s.global_position"
        " WHERE s.rn <= ? OR s.rn > s.n - ? ORDER BY e.global_position"
    )

    # -- commands and snapshots ----------------------------------------------------------
    processed_command = "SELECT result FROM processed_commands WHERE command_id = ?"
    record_command = (
        "INSERT INTO processed_commands (command_id, stream_id, result, processed_at)"
        " VALUES (?, ?, ?{json}, ?) ON CONFLICT (command_id) DO NOTHING"
    )
    load_snapshot = f"SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE stream_id = ?"
    save_snapshot = (
        f"INSERT INTO snapshots ({SNAPSHOT_COLUMNS}) VALUES (?, ?, ?, ?, ?{{json}}, ?)"
        " ON CONFLICT (stream_id) DO UPDATE SET"
        " aggregate_type = excluded.aggregate_type, version = excluded.version,"
        " schema_version = excluded.schema_version, state = excluded.state, taken_at = excluded.taken_at"
    )
    # A usable snapshot (its row first: position 0) and the stream's events after it, in
    # one statement; see Statements.snapshot_and_tail_params. Its parameters are numbered (stream id,
    # schema version, last version): SQLite binds each once, PostgreSQL takes them in order.
    snapshot_and_tail = (
        "SELECT 0, version, state{text}, NULL, NULL FROM snapshots"
        " WHERE stream_id = ?1 AND schema_version = ?2 AND version <= ?3"
        " UNION ALL SELECT global_position, stream_version, event_type, schema_version, data{text} FROM events"
        " WHERE stream_id = ?1 AND stream_version <= ?3 AND stream_version > coalesce(("
        "SELECT version FROM snapshots WHERE stream_id = ?1 AND schema_version = ?2 AND version <= ?3), 0)"
        " ORDER BY 2"
    )
    list_snapshots = f"SELECT {SNAPSHOT_COLUMNS} FROM snapshots ORDER BY stream_id LIMIT ?"
    delete_snapshot = "DELETE FROM snapshots WHERE stream_id = ?"
    delete_snapshots = "DELETE FROM snapshots"

    # -- sagas and deadlines -------------------------------------------------------------
    get_saga = f"SELECT {SAGA_COLUMNS} FROM sagas WHERE saga_id = ?"
    save_saga = (
        f"INSERT INTO sagas ({SAGA_COLUMNS})"
        " VALUES (?, ?, ?, ?, ?{json}, ?{json}, ?{json}, ?{json}, ?, ?, ?, ?, ?)"
        " ON CONFLICT (saga_id) DO UPDATE SET status = excluded.status, current_step = excluded.current_step,"
        " steps = excluded.steps, results = excluded.results, compensations = excluded.compensations,"
        " state = excluded.state, error_message = excluded.error_message, updated_at = excluded.updated_at,"
        " version = excluded.version"
    )
    list_sagas = (
        f"SELECT {SAGA_COLUMNS} FROM sagas WHERE (CAST(? AS text) IS NULL OR status = ?)"
        " AND (CAST(? AS text) IS NULL OR saga_type = ?) ORDER BY created_at, saga_id LIMIT ?"
    )
    saga_counts = "SELECT status, count(*) FROM sagas GROUP BY status"
    add_deadline = (
        "INSERT INTO deadlines (deadline_id, saga_id, name, due_at, payload, status)"
        " VALUES (?, ?, ?, ?, ?{json}, ?) ON CONFLICT (deadline_id) DO NOTHING"
    )
    due_deadlines = (
        f"SELECT {DEADLINE_COLUMNS} FROM deadlines WHERE status = 'pending' AND due_at <= ?"
        " ORDER BY due_at, deadline_id LIMIT ?"
    )
    saga_deadlines = f"SELECT {DEADLINE_COLUMNS} FROM deadlines WHERE saga_id = ? ORDER BY due_at"
    set_deadline_status = "UPDATE deadlines SET status = ?, fired_at = ? WHERE deadline_id = ?"

    # -- outbox --------------------------------------------------------------------------
    add_outbox = (
        "INSERT INTO outbox (message_id, event_position, topic, key, payload, headers, next_attempt_at,"
        " created_at) VALUES (?, ?, ?, ?, ?{json}, ?{json}, ?, ?) ON CONFLICT (message_id) DO NOTHING"
    )
    count_due_outbox = "SELECT count(*) FROM outbox WHERE status = 'pending' AND next_attempt_at <= ?"
    mark_failed = (
        "UPDATE outbox SET status = ?, attempts = ?, next_attempt_at = ?, last_error = ?"
        " WHERE seq = ? AND status = 'pending'"
    )
    dead_outbox = "SELECT count(*) FROM outbox WHERE status = 'dead'"
    top_outbox = "SELECT coalesce(max(seq), 0) FROM outbox"
    list_outbox = f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE 1 = 1"
    outbox_by_seq = f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE seq = ?"
    outbox_by_id = f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE message_id = ?"
    requeue_outbox = (
        "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = ?"
        " WHERE seq = ? AND status IN ('pending', 'dead')"
    )
    requeue_dead_outbox = (
        "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = ? WHERE status = 'dead'"
    )
    # Leases (see Outbox): one row per claimed batch, its seqs a JSON array.
    outbox_leases = "SELECT lease_id, owner, lease_until, seqs{text} FROM outbox_leases"
    add_outbox_lease = "INSERT INTO outbox_leases (owner, lease_until, seqs) VALUES (?, ?, ?{json})"
    set_outbox_lease_seqs = "UPDATE outbox_leases SET seqs = ?{json} WHERE lease_id = ?"

    # -- the operations journal ----------------------------------------------------------
    add_journal = (
        "INSERT INTO cqrsctl_journal (at, actor, kind, args, result) VALUES (?, ?, ?, ?{json}, ?{json})"
    )
    list_journal = "SELECT id, at, actor, kind, args{text}, result{text} FROM cqrsctl_journal WHERE 1 = 1"

    def __init__(self, param: str, json: str, text: str, *, arrays: bool, no_limit: int | None) -> None:
        self.param, self.arrays, self.no_limit = param, arrays, no_limit
        for name, template in vars(Statements).items():
            if not name.startswith("_") and isinstance(template, str):
                rendered = template.replace("{json}", json).replace("{text}", text)
                if param != "?":  # numbered parameters (`?1`) are SQLite's; others are taken in order
                    rendered = re.sub(r"\?\d*", param, rendered)
                setattr(self, name, rendered)

    def filtered(
        self, sql: str, params: list[Any], *conditions: tuple[str, Any], order: str, limit: int | None
    ) -> tuple[str, list[Any]]:
        """`sql` (a rendered statement ending in its WHERE clause) narrowed by ` AND condition`
        for each condition whose value is neither None nor an empty sequence, ordered, limited (None: no
        limit); with `params` and the values. Conditions use `?`; one ending in ` IN ?` takes
        a sequence (an `IN (…)` list on SQLite, `= ANY(array)` on PostgreSQL)."""
        params = list(params)
        for condition, value in conditions:
            if value is None or (isinstance(value, (list, tuple)) and not value):
                continue
            if condition.endswith(" IN ?"):
                column = condition.removesuffix(" IN ?")
                if self.arrays:
                    condition, values = f"{column} = ANY(?)", [list(value)]
                else:
                    condition, values = f"{column} IN ({', '.join('?' * len(value))})", list(value)
            else:
                values = [value]
            sql += " AND " + condition.replace("?", self.param)
            params += values
        params.append(self.no_limit if limit is None else limit)
        return f"{sql} ORDER BY {order} LIMIT {self.param}", params

    def scan_page(
        self, after: int, limit: int, types: Sequence[str] | None, until: int | None, lean: bool, bare: bool
    ) -> tuple[str, list[Any]]:
        """A page of events after `after` (see Tracking.scan)."""
        return self.filtered(
            self.scan_bare if bare else self.scan_lean if lean else self.scan,
            [after],
            ("global_position <= ?", until),
            ("event_type IN ?", types),
            order="global_position",
            limit=limit,
        )

    def snapshot_and_tail_params(
        self, stream_id: str, schema_version: str, to_version: int | None
    ) -> tuple[Any, ...]:
        """The parameters of snapshot_and_tail (a version past any stream's head when there
        is no last one): numbered ones bound once each, positional ones in order."""
        last = 2**62 if to_version is None else to_version
        if self.param == "?":
            return (stream_id, schema_version, last)
        return (stream_id, schema_version, last, stream_id, last, stream_id, schema_version, last)

    def outbox_listing(
        self, status: str | None, topic: str | None, key: str | None, limit: int | None
    ) -> tuple[str, list[Any]]:
        """Outbox rows by status, topic and key (see Outbox.select)."""
        return self.filtered(
            self.list_outbox,
            [],
            ("status = ?", status or None),
            ("topic = ?", topic or None),
            ("key = ?", key),
            order="seq",
            limit=limit,
        )


# SQLite reads LIMIT -1 as no limit, PostgreSQL LIMIT NULL.
SQLITE = Statements("?", "", "", arrays=False, no_limit=-1)
POSTGRES = Statements("%s", "::jsonb", "::text", arrays=True, no_limit=None)


def split_snapshot(rows: list[Any]) -> tuple[int, Any, list[Any]]:
    """snapshot_and_tail's rows as Transaction.read_from_snapshot returns them."""
    if rows and rows[0][0] == 0:
        return rows[0][1], rows[0][2], rows[1:]
    return 0, None, rows
