"""Import sources: histories kept by other systems, turned into events for `import`.

- NestJS Kafka event stores (`kafka://host:port?topics=PATTERN`): one topic per aggregate
  type, values `{"eventId", "eventType", "aggregateId", "aggregateType", "aggregateVersion",
  "timestamp", "correlationId", "causationId", "metadata", "data"}`.
- DynamoDB event tables as DynamoDB exports them (one `{"Item": {…}}` per line, plain or
  gzip): `PK = "<TYPE>#<id>"`, `SK = "EVENT#<timestamp>#<event id>"`, `version`, event type,
  data, metadata.

Every source yields :class:`SourceEvent`. :func:`import_source` stages them in a scratch
SQLite file (so memory stays flat however long the history), checks each stream's
versions (duplicates dropped and reported, gaps stopped on or reported), and hands the
events, each stream in version order, to :func:`transfer.import_events`, the same import
the `cqrsctl export` files go through. Nothing is written before the whole input has been
read and checked.
"""

from __future__ import annotations

import fnmatch
import gzip
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from ..errors import FileAccessError, HistoryGapError, SourceError, UsageError, ValidationError
from ..store import Store, StoredEvent
from ..store.base import iso
from ..times import parse_iso
from . import transfer
from .jsonl import json_objects

ON_GAP = ("stop", "report")
LISTED = 20  # gaps and duplicates named one by one in a report; the rest are counted


@dataclass(frozen=True)
class SourceEvent:
    """One event as read from a source; `where` says where it was (for messages)."""

    stream_id: str
    version: int
    event_id: str
    event_type: str
    recorded_at: datetime
    data: dict[str, Any]
    metadata: dict[str, Any]
    where: str


# -- shared checks ----------------------------------------------------------------------


def _text(value: Any, name: str, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int) or str(value) == "":
        raise ValidationError(f"{where}: missing or empty {name}")
    return str(value)


def _version(value: Any, where: str) -> int:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError(f"{where}: aggregateVersion must be a whole number from 1, got {value!r}")
    return value


def _time(value: Any, where: str) -> datetime:
    try:
        return parse_iso(str(value))
    except ValueError:
        raise ValidationError(f"{where}: timestamp {value!r} is not ISO 8601") from None


def _object(value: Any, name: str, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, str):  # some stores keep JSON text
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            raise ValidationError(f"{where}: {name} is not JSON") from None
    if not isinstance(value, dict):
        raise ValidationError(f"{where}: {name} must be an object")
    return value


def _stream(kind: str, ident: str, where: str) -> str:
    # The category is the part of the stream id before the first '-'.
    if "-" in kind:
        raise ValidationError(
            f"{where}: aggregate type {kind!r} contains '-', which would split the stream id"
        )
    return f"{kind}-{ident}"


def _event(
    kind: Any, ident: Any, version: Any, event_id: Any, event_type: Any, timestamp: Any,
    data: Any, metadata: Any, correlation: Any, causation: Any, where: str,
) -> SourceEvent:  # fmt: skip
    meta = _object(metadata, "metadata", where)
    if correlation:
        meta["correlation_id"] = str(correlation)
    if causation:
        meta["causation_id"] = str(causation)
    return SourceEvent(
        _stream(_text(kind, "aggregateType", where), _text(ident, "aggregateId", where), where),
        _version(version, where),
        _text(event_id, "eventId", where),
        _text(event_type, "eventType", where),
        _time(timestamp, where),
        _object(data, "data", where),
        meta,
        where,
    )


# -- NestJS values (Kafka) ----------------------------------------------------------------


def nestjs_event(value: bytes | None, where: str, fallback_time: datetime | None = None) -> SourceEvent:
    """One NestJS event-store value; ValidationError naming `where` when it is not one."""
    if value is None:
        raise ValidationError(f"{where}: the message has no value")
    try:
        v = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise ValidationError(f"{where}: the value is not JSON: {exc}") from None
    if not isinstance(v, dict):
        raise ValidationError(f"{where}: the value is not a JSON object")
    timestamp = v.get("timestamp") or fallback_time
    if timestamp is None:
        raise ValidationError(f"{where}: missing timestamp")
    return _event(
        v.get("aggregateType"), v.get("aggregateId"), v.get("aggregateVersion"), v.get("eventId"),
        v.get("eventType"), timestamp if isinstance(timestamp, str) else iso(timestamp),
        v.get("data"), v.get("metadata"), v.get("correlationId"), v.get("causationId"), where,
    )  # fmt: skip


def parse_kafka_url(url: str) -> tuple[str, list[str]]:
    """(bootstrap servers, topic patterns) of `kafka://host:port[,…]?topics=PATTERN[,PATTERN…]`."""
    parts = urlsplit(url)
    if parts.scheme != "kafka" or not parts.netloc:
        raise UsageError(f"unsupported import source {url!r}: use kafka://host:port?topics=PATTERN")
    if "@" in parts.netloc:
        raise UsageError("kafka import: credentials in the URL are not supported")
    patterns = [p for t in parse_qs(parts.query).get("topics", []) for p in t.split(",") if p]
    if not patterns:
        raise UsageError("kafka import: name the topics, e.g. kafka://127.0.0.1:9092?topics=shop.*.events")
    return parts.netloc, patterns


def read_kafka(url: str, *, timeout: float = 30.0) -> Iterator[SourceEvent]:
    """Every record of the matching topics, each partition from its beginning to the end it
    has when the read reaches it (the broker's end-of-partition signal)."""
    reader = _KafkaReader(url, timeout)
    try:
        yield from reader.events()
    finally:
        reader.consumer.close()


class _KafkaReader:
    """One read of a Kafka source: reach the brokers, find the topics, read each partition
    to its end."""

    def __init__(self, url: str, timeout: float) -> None:
        from ..sinks import require

        self.servers, self.patterns = parse_kafka_url(url)
        self.timeout = timeout
        self.ck = require("confluent_kafka", "kafka", "kafka import")
        self.errors: list[str] = []
        self.down: list[str] = []
        self.consumer = self.ck.Consumer(
            {
                "bootstrap.servers": self.servers,
                "group.id": "cqrsctl-import",  # offsets are never committed: every run reads it all
                "enable.auto.commit": False,
                # End of partition from the fetch itself: some brokers' ListOffsets lag behind.
                "enable.partition.eof": True,
                "socket.connection.setup.timeout.ms": int(timeout * 1000),
                "error_cb": self._on_error,
                "log_level": 0,
            }
        )

    def _on_error(self, err: Any) -> None:
        self.errors.append(err.str())
        if err.code() == self.ck.KafkaError._ALL_BROKERS_DOWN:
            self.down.append(err.str())

    def _metadata(self) -> Any:
        deadline = time.monotonic() + self.timeout
        while True:  # a refused connection ends this at once, a silent one at the deadline
            try:
                return self.consumer.list_topics(timeout=1.0)
            except self.ck.KafkaException as exc:
                self.consumer.poll(0)  # serves error_cb
                if self.down or time.monotonic() > deadline:
                    reason = self.errors[0] if self.errors else exc.args[0].str()
                    raise SourceError(
                        f"kafka import: {self.servers} could not be reached: {reason}"
                    ) from None

    def _partitions(self) -> set[tuple[str, int]]:
        metadata = self._metadata()
        topics = sorted(
            t for t in metadata.topics
            if not t.startswith("__") and any(fnmatch.fnmatchcase(t, p) for p in self.patterns)
        )  # fmt: skip
        if not topics:
            raise UsageError(f"kafka import: no topic on {self.servers} matches {','.join(self.patterns)}")
        return {(t, p) for t in topics for p in metadata.topics[t].partitions}

    def events(self) -> Iterator[SourceEvent]:
        ck, pending = self.ck, self._partitions()
        self.consumer.assign([ck.TopicPartition(t, p, ck.OFFSET_BEGINNING) for t, p in sorted(pending)])
        idle_since: float | None = None
        while pending:
            records = self.consumer.consume(500, timeout=1.0)
            if not records:
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > self.timeout:
                    left = ", ".join(f"{t}[{p}]" for t, p in sorted(pending))
                    reason = f" ({self.errors[-1]})" if self.errors else ""
                    raise SourceError(
                        f"kafka import: {left} not read to the end within {self.timeout:g}s{reason}"
                    )
                continue
            idle_since = None
            yield from self._read(records, pending)

    def _read(self, records: list[Any], pending: set[tuple[str, int]]) -> Iterator[SourceEvent]:
        """The events of `records`; a partition's end takes it off `pending`."""
        for r in records:
            place = (r.topic(), r.partition())
            if place not in pending:
                continue
            err = r.error()
            if err is not None:
                if err.code() == self.ck.KafkaError._PARTITION_EOF:
                    pending.discard(place)
                    continue
                raise SourceError(f"kafka import: {err.str()}")
            kind, ms = r.timestamp()
            fallback = datetime.fromtimestamp(ms / 1000, UTC) if kind and ms and ms > 0 else None
            yield nestjs_event(r.value(), f"{r.topic()}[{r.partition()}]@{r.offset()}", fallback)


# -- DynamoDB export ----------------------------------------------------------------------


def _attribute(value: Any) -> Any:
    """A DynamoDB-JSON attribute value as plain JSON (`{"N": "3"}` → 3, `{"M": …}` → dict)."""
    if not isinstance(value, dict) or len(value) != 1:
        raise ValueError(f"not a DynamoDB attribute value: {value!r}")
    [(kind, v)] = value.items()
    if kind == "S" or kind == "B":
        return v
    if kind == "N":
        number = float(v)
        return int(v) if number.is_integer() and "." not in v and "e" not in v.lower() else number
    if kind == "BOOL":
        return bool(v)
    if kind == "NULL":
        return None
    if kind == "M":
        return {k: _attribute(x) for k, x in v.items()}
    if kind == "L":
        return [_attribute(x) for x in v]
    if kind in ("SS", "BS"):
        return list(v)
    if kind == "NS":
        return [_attribute({"N": x}) for x in v]
    raise ValueError(f"unknown DynamoDB type {kind!r}")


def dynamodb_event(line: dict[str, Any], where: str) -> SourceEvent | None:
    """The event in one export line, or None for an item that is not an event (SK not EVENT#…)."""
    raw = line.get("Item", line)
    if not isinstance(raw, dict):
        raise ValidationError(f'{where}: expected {{"Item": {{…}}}}')
    try:
        item = {k: _attribute(v) for k, v in raw.items()}
    except ValueError as exc:
        raise ValidationError(f"{where}: {exc}") from None
    sk = str(item.get("SK", ""))
    if not sk.startswith("EVENT#"):
        return None
    pk = item.get("PK")
    if not isinstance(pk, str) or "#" not in pk:
        raise ValidationError(f"{where}: PK must be '<AGGREGATE TYPE>#<aggregate id>', got {pk!r}")
    kind, ident = pk.split("#", 1)
    _, sk_time, sk_id = (sk.split("#", 2) + ["", ""])[:3]
    meta = item.get("metadata")
    meta_obj = _object(meta, "metadata", where)
    return _event(
        item.get("aggregateType") or kind, item.get("aggregateId") or ident, item.get("version"),
        item.get("eventId") or sk_id, item.get("eventType") or item.get("type"),
        item.get("timestamp") or sk_time, item.get("data"), meta_obj,
        item.get("correlationId") or meta_obj.get("correlationId"),
        item.get("causationId") or meta_obj.get("causationId"), where,
    )  # fmt: skip


def read_dynamodb_export(path: Path) -> Iterator[SourceEvent | None]:
    """The events of a DynamoDB export data file (`.json` or `.json.gz`), None for other items."""
    try:
        with path.open("rb") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
        with gzip.open(path, "rb") if gzipped else path.open("rb") as f:
            for number, line in json_objects(f):
                yield dynamodb_event(line, f"{path.name} line {number}")
    except (OSError, EOFError) as exc:
        raise FileAccessError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None


# -- staging, checking and importing ------------------------------------------------------


@dataclass
class SourceReport:
    """What an import from a source read, dropped, cut and wrote."""

    read: int = 0
    ignored: int = 0  # items that are not events (DynamoDB rows other than EVENT#…)
    streams: int = 0
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    duplicate_count: int = 0
    gaps: list[dict[str, Any]] = field(default_factory=list)
    gap_count: int = 0
    cut: int = 0  # events after a gap, not imported (--on-gap report)
    to_import: int = 0
    imported: int = 0
    already_present: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "read": self.read, "ignored": self.ignored, "streams": self.streams,
            "imported": self.imported, "already_present": self.already_present,
            "duplicates": self.duplicate_count, "gaps": self.gap_count, "cut_after_gaps": self.cut,
            "duplicate_list": self.duplicates, "gap_list": self.gaps,
        }  # fmt: skip

    def summary(self) -> str:
        text = (
            f"imported {self.imported} events into {self.streams} streams"
            f" ({self.already_present} already present) from {self.read} read"
        )
        if self.duplicate_count:
            text += f"; {self.duplicate_count} duplicates dropped"
        if self.gap_count:
            text += f"; {self.gap_count} gaps, {self.cut} events after them not imported"
        if self.ignored:
            text += f"; {self.ignored} items that are not events ignored"
        return text


_SCHEMA = """
CREATE TABLE staged (seq INTEGER PRIMARY KEY, stream TEXT NOT NULL, version INTEGER NOT NULL,
    event_id TEXT NOT NULL, at TEXT NOT NULL, body BLOB NOT NULL, place TEXT NOT NULL,
    keep INTEGER NOT NULL DEFAULT 1);
"""


class _Staging:
    """A scratch SQLite file holding the source's events, so checking and ordering use
    disk, not memory."""

    def __init__(self, directory: str) -> None:
        self.db = sqlite3.connect(Path(directory) / "staged.db", isolation_level=None)
        self.db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + _SCHEMA)

    def load(
        self,
        events: Iterable[SourceEvent | None],
        report: SourceReport,
        on_read: Callable[[int], None] | None,
    ) -> None:
        chunk: list[tuple[Any, ...]] = []

        def flush() -> None:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT INTO staged (stream, version, event_id, at, body, place) VALUES (?,?,?,?,?,?)", chunk
            )
            self.db.execute("COMMIT")
            if on_read:
                on_read(len(chunk))
            chunk.clear()

        for e in events:
            if e is None:
                report.ignored += 1
                continue
            report.read += 1
            body = orjson.dumps({"type": e.event_type, "data": e.data, "metadata": e.metadata})
            chunk.append((e.stream_id, e.version, e.event_id, iso(e.recorded_at), body, e.where))
            if len(chunk) >= 5000:
                flush()
        if chunk:
            flush()
        self.db.execute("CREATE INDEX staged_stream ON staged (stream, version, seq)")

    def check(self, report: SourceReport, on_gap: str) -> None:
        """Set aside duplicates, find the gaps (raising at the first with `on_gap` "stop"),
        cut each stream at its first gap, and count what is left to import."""
        self._drop_duplicates(report)
        self._find_gaps(report, on_gap)
        self._cut_at_gaps(report)
        report.to_import, report.streams = self.db.execute(
            "SELECT COUNT(*), COUNT(DISTINCT stream) FROM staged WHERE keep = 1"
        ).fetchone()

    def _drop_duplicates(self, report: SourceReport) -> None:
        q = self.db.execute
        # The first record of a (stream, version) wins; a later one is a duplicate (same
        # event id: re-delivered) or a conflict (another event claims that version).
        rows = q(
            "SELECT s.seq, s.stream, s.version, s.event_id, f.event_id, s.place, f.place FROM staged s"
            " JOIN (SELECT stream, version, MIN(seq) AS first FROM staged GROUP BY stream, version"
            "       HAVING COUNT(*) > 1) d ON s.stream = d.stream AND s.version = d.version AND s.seq <> d.first"
            " JOIN staged f ON f.seq = d.first ORDER BY s.seq"
        ).fetchall()
        # An event id seen again at another place keeps its first place too.
        rows += q(
            "SELECT s.seq, s.stream, s.version, s.event_id, f.event_id, s.place, f.place FROM staged s"
            " JOIN (SELECT event_id, MIN(seq) AS first FROM staged GROUP BY event_id HAVING COUNT(*) > 1) d"
            "   ON s.event_id = d.event_id AND s.seq <> d.first"
            " JOIN staged f ON f.seq = d.first"
            " WHERE NOT (s.stream = f.stream AND s.version = f.version) ORDER BY s.seq"
        ).fetchall()
        rows = sorted({r[0]: r for r in rows}.values())  # one row per record, in read order
        report.duplicate_count = len(rows)
        for _seq, stream, version, event_id, first_id, place, first_place in rows[:LISTED]:
            report.duplicates.append(
                {
                    "stream_id": stream, "version": version, "event_id": event_id, "at": place,
                    "first_at": first_place, "same_event": event_id == first_id,
                }
            )  # fmt: skip
        q("BEGIN")
        for start in range(0, len(rows), 500):
            seqs = [r[0] for r in rows[start : start + 500]]
            q(f"UPDATE staged SET keep = 0 WHERE seq IN ({','.join('?' * len(seqs))})", seqs)
        q("COMMIT")

    def _find_gaps(self, report: SourceReport, on_gap: str) -> None:
        q = self.db.execute
        gaps = q(
            "SELECT stream, prev, version, place FROM (SELECT stream, version, place,"
            "   LAG(version, 1, 0) OVER (PARTITION BY stream ORDER BY version) AS prev"
            "   FROM staged WHERE keep = 1) WHERE version <> prev + 1 ORDER BY stream, version"
        ).fetchall()
        report.gap_count = len(gaps)
        report.gaps = [
            {"stream_id": s, "after_version": prev, "next_version": v, "at": place}
            for s, prev, v, place in gaps[:LISTED]
        ]
        if gaps and on_gap == "stop":
            s, prev, v, place = gaps[0]
            more = f" (and {len(gaps) - 1} more gaps)" if len(gaps) > 1 else ""
            after = f"version {prev}" if prev else "the start"
            raise HistoryGapError(
                f"stream {s} skips from {after} to version {v} at {place}{more}; nothing was imported"
                " (--on-gap report imports each stream up to its first gap)"
            )

    def _cut_at_gaps(self, report: SourceReport) -> None:
        q = self.db.execute
        # --on-gap report: a stream is imported up to its first gap, never with a hole in it.
        q("BEGIN")
        cut = q(
            "UPDATE staged SET keep = 0 WHERE keep = 1 AND EXISTS (SELECT 1 FROM"
            " (SELECT stream AS g_stream, MIN(version) AS g_version FROM (SELECT stream, version,"
            "   LAG(version, 1, 0) OVER (PARTITION BY stream ORDER BY version) AS prev"
            "   FROM staged WHERE keep = 1) WHERE version <> prev + 1 GROUP BY stream)"
            " WHERE g_stream = staged.stream AND staged.version >= g_version)"
        )
        report.cut = cut.rowcount
        q("COMMIT")

    def events(self) -> Iterator[StoredEvent]:
        # Each stream in version order; streams interleaved by time (the latest time seen so
        # far in the stream, so a clock that went back never reorders a stream).
        rows = self.db.execute(
            "SELECT stream, version, event_id, at, body FROM (SELECT *, MAX(at) OVER"
            " (PARTITION BY stream ORDER BY version ROWS UNBOUNDED PRECEDING) AS sort_at"
            " FROM staged WHERE keep = 1) ORDER BY sort_at, stream, version"
        )
        for stream, version, event_id, at, body in rows:
            b = orjson.loads(body)
            yield StoredEvent(
                0, stream, version, event_id, b["type"], 1, b["data"], b["metadata"],
                parse_iso(at),
            )  # fmt: skip

    def close(self) -> None:
        self.db.close()


class Staged:
    """A source read and checked, not yet imported (from :func:`stage`); close it, or use it
    as a context manager, to remove its scratch file."""

    def __init__(
        self, report: SourceReport, staging: _Staging, directory: tempfile.TemporaryDirectory[str]
    ) -> None:
        self.report, self._staging, self._directory = report, staging, directory

    def import_into(self, store: Store, *, on_progress: Callable[[int], None] | None = None) -> SourceReport:
        """Import the checked events: ids and versions kept, ids already in `store` skipped."""
        result = transfer.import_events(store, enumerate(self._staging.events(), 1), on_progress=on_progress)
        imported, present = result.imported, result.skipped
        self.report.imported, self.report.already_present = imported, present
        return self.report

    def close(self) -> None:
        self._staging.close()
        self._directory.cleanup()

    def __enter__(self) -> Staged:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stage(
    events: Iterable[SourceEvent | None],
    *,
    on_gap: str = "stop",
    on_read: Callable[[int], None] | None = None,
) -> Staged:
    """Read `events` completely into a scratch file and check each stream's versions.

    A bad event raises (ValidationError naming where it was) before anything is written.
    Duplicates (a version or an event id seen again) are dropped and reported. A gap in a
    stream's versions raises HistoryGapError under `on_gap="stop"`; under `"report"` each
    stream keeps its events up to its first gap and the gaps are reported.
    """
    if on_gap not in ON_GAP:
        raise UsageError(f"--on-gap must be stop or report, not {on_gap!r}")
    report = SourceReport()
    directory = tempfile.TemporaryDirectory(prefix="cqrsctl-import-")
    staging = _Staging(directory.name)
    staged = Staged(report, staging, directory)
    try:
        staging.load(events, report, on_read)
        staging.check(report, on_gap)
    except BaseException:
        staged.close()
        raise
    return staged


def import_source(
    store: Store, events: Iterable[SourceEvent | None], *, on_gap: str = "stop"
) -> SourceReport:
    """:func:`stage`, then import: `import_source(store, read_kafka(url), on_gap="report")`."""
    with stage(events, on_gap=on_gap) as staged:
        return staged.import_into(store)


def open_source(
    url: str | None = None, path: Path | None = None, input_format: str = "dynamodb-export"
) -> Iterator[SourceEvent | None]:
    """The events of `url` (kafka://…?topics=…) or of the file `path` in `input_format`."""
    if url is not None:
        return read_kafka(url)
    if path is None or input_format != "dynamodb-export":
        raise UsageError(
            "give kafka://host:port?topics=PATTERN, or a file with --input-format dynamodb-export"
        )
    return read_dynamodb_export(path)
