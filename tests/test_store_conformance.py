"""The store contract (SPEC §3), one suite run on every backend through the `store` fixture."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from cqrsctl.errors import (
    CommandRaceError,
    ConcurrencyError,
    DatabaseError,
    DuplicateEventError,
    NotFoundError,
    ValidationError,
)
from cqrsctl.store import (
    ANY,
    EXISTS,
    NO_STREAM,
    ExpectedVersion,
    NewEvent,
    Snapshot,
    Store,
    StoredEvent,
    open_store,
)
from cqrsctl.store.base import SCHEMA_VERSION


def ev(n: int = 0, type_: str = "Happened", **data: Any) -> NewEvent:
    return NewEvent(type_, {"n": n, **data})


def seed(store: Store, stream_id: str, count: int, type_: str = "Happened") -> list[int]:
    return store.append(stream_id, [ev(i, type_) for i in range(count)]).positions


def all_events(store: Store) -> list[StoredEvent]:
    return list(store.iter_all())


def wait_for_clock_past(instant: datetime) -> None:
    """Spin until the wall clock has moved past `instant` (microseconds, not a sleep)."""
    deadline = datetime.now(UTC) + timedelta(seconds=5)
    while (now := datetime.now(UTC)) <= instant:
        assert now < deadline, "wall clock did not advance"


# -- optimistic concurrency -------------------------------------------------------------

# (version the stream is at, expected version) pairs; 0 means the stream does not exist.
ACCEPTED: list[tuple[int, ExpectedVersion]] = [
    (0, ANY),
    (0, NO_STREAM),
    (0, 0),
    (2, ANY),
    (2, EXISTS),
    (2, 2),
]
REJECTED: list[tuple[int, ExpectedVersion]] = [
    (0, EXISTS),
    (0, 1),
    (0, 5),
    (2, NO_STREAM),
    (2, 0),
    (2, 1),
    (2, 3),
]


@pytest.mark.parametrize(("at", "expected"), ACCEPTED, ids=str)
def test_expected_version_accepted(store: Store, at: int, expected: ExpectedVersion) -> None:
    if at:
        seed(store, "Order-1", at)
    before = store.head()
    result = store.append("Order-1", [ev(1), ev(2)], expected)
    assert result.version == at + 2
    assert not result.duplicate
    assert len(result.positions) == 2 and before < result.positions[0] < result.positions[1]
    assert [e.stream_version for e in store.read_stream("Order-1")] == list(range(1, at + 3))
    assert store.head() == result.positions[-1]


@pytest.mark.parametrize(("at", "expected"), REJECTED, ids=str)
def test_expected_version_mismatch_appends_nothing(store: Store, at: int, expected: ExpectedVersion) -> None:
    if at:
        seed(store, "Order-1", at)
    before = all_events(store)
    with pytest.raises(ConcurrencyError) as info:
        store.append("Order-1", [ev(1), ev(2)], expected)
    err = info.value
    assert (err.stream_id, err.expected, err.actual) == ("Order-1", expected, at)
    message = str(err)
    assert "Order-1" in message and f"expected {expected}" in message
    assert ("no stream" in message) if at == 0 else (f"version {at}" in message)
    assert all_events(store) == before
    assert store.stream_version("Order-1") == at


def test_exact_versions_chain(store: Store) -> None:
    for version in range(5):
        assert store.append("Cart-9", [ev(version)], version).version == version + 1
    with pytest.raises(ConcurrencyError):
        store.append("Cart-9", [ev(99)], 3)
    assert store.stream_version("Cart-9") == 5


def test_bad_stream_ids_and_empty_batches_are_rejected(store: Store) -> None:
    for bad in ["", "   "]:
        with pytest.raises(ValidationError):
            store.append(bad, [ev()])
    with pytest.raises(ValidationError):
        store.append("Order-1", [])
    assert store.head() == 0


# -- atomic batches ---------------------------------------------------------------------


def test_batch_with_a_repeated_event_id_writes_nothing(store: Store) -> None:
    seed(store, "Order-1", 1)
    before = all_events(store)
    same = str(uuid.uuid4())
    batch = [
        ev(1),
        NewEvent("Happened", {"n": 2}, event_id=same),
        NewEvent("Happened", {"n": 3}, event_id=same),
    ]
    with pytest.raises(DuplicateEventError):
        store.append("Order-1", batch)
    assert all_events(store) == before
    # The store stays usable and the next version is still 2.
    assert store.append("Order-1", [ev(4)], 1).version == 2


def test_unserialisable_data_writes_nothing(store: Store) -> None:
    with pytest.raises(TypeError):
        store.append("Order-1", [ev(1), NewEvent("Happened", {"bad": {1, 2}})])
    assert store.head() == 0
    assert store.stream_version("Order-1") == 0


def test_failing_transaction_rolls_back_every_append_and_command_record(store: Store) -> None:
    seed(store, "Order-1", 1)
    before = all_events(store)
    with pytest.raises(RuntimeError, match="boom"):
        with store.transaction() as tx:
            tx.append("Order-1", [ev(1)], 1)
            tx.append("Order-2", [ev(2), ev(3)], NO_STREAM)
            tx.commands.record("cmd-1", "Order-2", {"ok": True})
            raise RuntimeError("boom")
    assert all_events(store) == before
    with store.reader() as tx:
        assert tx.commands.processed("cmd-1") is None


def test_conflict_inside_a_transaction_rolls_back_earlier_appends(store: Store) -> None:
    with pytest.raises(ConcurrencyError):
        with store.transaction() as tx:
            tx.append("Order-1", [ev(1)], NO_STREAM)
            tx.append("Order-1", [ev(2)], NO_STREAM)
    assert store.head() == 0


def test_transaction_sees_its_own_writes(store: Store) -> None:
    with store.transaction() as tx:
        first = tx.append("Order-1", [ev(1)], NO_STREAM)
        assert tx.stream_version("Order-1") == 1
        second = tx.append("Order-1", [ev(2)], 1)
        assert [e.event_id for e in tx.read_stream("Order-1")] == first.event_ids + second.event_ids
    assert store.stream_version("Order-1") == 2


# -- idempotent event ids ---------------------------------------------------------------


def test_reappending_same_event_ids_is_a_noop(store: Store) -> None:
    ids = [str(uuid.uuid4()), str(uuid.uuid4())]
    batch = [NewEvent("Opened", {"a": 1}, event_id=ids[0]), NewEvent("Renamed", {"b": "x"}, event_id=ids[1])]
    first = store.append("Account-1", batch, NO_STREAM)
    seed(store, "Account-1", 1)  # the stream moves on; the replay must still be recognised
    before = all_events(store)
    again = store.append("Account-1", batch, NO_STREAM)  # even with a now-wrong expected version
    assert again.duplicate and not first.duplicate
    assert again.positions == first.positions
    assert again.event_ids == ids == first.event_ids
    assert again.version == 2
    assert all_events(store) == before


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda e: NewEvent(e.type, {"a": 2}, event_id=e.event_id), id="data"),
        pytest.param(lambda e: NewEvent("Closed", e.data, event_id=e.event_id), id="type"),
        pytest.param(None, id="stream"),
    ],
)
def test_reused_event_id_with_other_content_is_rejected(
    store: Store, change: Callable[[NewEvent], NewEvent] | None
) -> None:
    original = NewEvent("Opened", {"a": 1}, event_id=str(uuid.uuid4()))
    store.append("Account-1", [original])
    before = all_events(store)
    with pytest.raises(DuplicateEventError, match=original.event_id or ""):
        if change is None:
            store.append("Account-2", [original])
        else:
            store.append("Account-1", [change(original)])
    assert all_events(store) == before


def test_batch_mixing_new_and_existing_ids_is_rejected(store: Store) -> None:
    old = NewEvent("Opened", {"a": 1}, event_id=str(uuid.uuid4()))
    store.append("Account-1", [old])
    before = all_events(store)
    fresh = NewEvent("Renamed", {"b": 1}, event_id=str(uuid.uuid4()))
    with pytest.raises(DuplicateEventError):
        store.append("Account-1", [old, fresh])
    assert all_events(store) == before


# -- reading ----------------------------------------------------------------------------


def test_category_and_type_filters(store: Store) -> None:
    store.append("Account-A-1", [ev(1, "Opened"), ev(2, "Deposited")])
    store.append("User-7", [ev(3, "Registered")])
    store.append("Account-B", [ev(4, "Opened")])
    store.append("Audit", [ev(5, "Opened")])  # no dash: its own category
    store.append("Account-A-1", [ev(6, "Deposited")])

    def ns(events: list[StoredEvent]) -> list[int]:
        return [e.data["n"] for e in events]

    assert ns(store.read_all(categories=["Account"])) == [1, 2, 4, 6]
    assert {e.category for e in store.read_all(categories=["Account"])} == {"Account"}
    assert ns(store.read_all(categories=["User", "Audit"])) == [3, 5]
    assert ns(store.read_all(types=["Opened"])) == [1, 4, 5]
    assert ns(store.read_all(categories=["Account"], types=["Deposited"])) == [2, 6]
    assert ns(store.read_all(categories=["Account-A"])) == []
    assert ns(store.read_all(categories=["Nope"])) == []
    assert ns(list(store.iter_all(page=1, categories=["Account"], types=["Opened"]))) == [1, 4]
    first_two = store.read_all(categories=["Account"], limit=2)
    assert ns(store.read_all(first_two[-1].global_position, categories=["Account"])) == [4, 6]


def test_paging_read_all_and_iter_all(store: Store) -> None:
    for i in range(5):
        store.append(f"S-{i % 3}", [ev(i * 5 + j) for j in range(5)])
    everything = store.read_all(0, 1000)
    assert [e.data["n"] for e in everything] == list(range(25))
    positions = [e.global_position for e in everything]
    assert positions == sorted(set(positions))

    pages: list[list[StoredEvent]] = []
    after = 0
    while page := store.read_all(after, 10):
        pages.append(page)
        after = page[-1].global_position
    assert [len(p) for p in pages] == [10, 10, 5]
    assert [e for p in pages for e in p] == everything

    for page_size in (1, 7, 25, 26, 1000):
        assert list(store.iter_all(page=page_size)) == everything
    assert list(store.iter_all(after=positions[9], page=4)) == everything[10:]
    assert store.read_all(positions[-1]) == []
    assert store.read_all(positions[-1] + 100) == []
    assert store.read_all(positions[3], 2) == everything[4:6]


def test_global_order_follows_commit_order_across_streams(store: Store) -> None:
    expected_ids: list[str] = []
    for i in range(12):
        expected_ids += store.append(f"Stream-{i % 4}", [ev(i), ev(i)]).event_ids
    events = all_events(store)
    assert [e.event_id for e in events] == expected_ids
    assert all(a.global_position < b.global_position for a, b in zip(events, events[1:], strict=False))
    for i in range(4):
        assert [e.stream_version for e in events if e.stream_id == f"Stream-{i}"] == list(range(1, 7))


def test_read_stream_version_range_and_limit(store: Store) -> None:
    seed(store, "Account-1", 10)
    seed(store, "Account-2", 3)

    def versions(**kw: Any) -> list[int]:
        return [e.stream_version for e in store.read_stream("Account-1", **kw)]

    assert versions() == list(range(1, 11))
    assert versions(from_version=4) == list(range(4, 11))
    assert versions(to_version=3) == [1, 2, 3]
    assert versions(from_version=3, to_version=5) == [3, 4, 5]
    assert versions(from_version=4, limit=2) == [4, 5]
    assert versions(from_version=11) == []
    assert versions(from_version=6, to_version=5) == []
    assert store.read_stream("Missing-1") == []
    assert {e.stream_id for e in store.read_stream("Account-1")} == {"Account-1"}


def test_read_stream_as_of(store: Store) -> None:
    store.append("Account-1", [ev(1), ev(2)])
    first = store.read_stream("Account-1")
    cut = first[-1].recorded_at
    wait_for_clock_past(cut)
    store.append("Account-1", [ev(3)])
    assert store.read_stream("Account-1", as_of=cut) == first
    # The same instant written in another zone selects the same events.
    assert store.read_stream("Account-1", as_of=cut.astimezone(timezone(timedelta(hours=5)))) == first
    assert store.read_stream("Account-1", as_of=cut - timedelta(days=1)) == []
    assert len(store.read_stream("Account-1", as_of=datetime.now(UTC) + timedelta(days=1))) == 3
    assert [e.stream_version for e in store.read_stream("Account-1", from_version=2, as_of=cut)] == [2]


def test_read_stream_data_is_read_stream_in_short(store: Store) -> None:
    seed(store, "Account-1", 6)
    seed(store, "Account-2", 2)
    cut = store.read_stream("Account-1")[-1].recorded_at
    wait_for_clock_past(cut)
    seed(store, "Account-1", 2)

    def short(**kw: Any) -> list[tuple[Any, ...]]:
        with store.reader() as tx:
            rows = tx.read_stream_data("Account-1", **kw)
        return [(p, v, t, s, d if isinstance(d, dict) else orjson.loads(d)) for p, v, t, s, d in rows]

    def full(**kw: Any) -> list[tuple[Any, ...]]:
        return [
            (e.global_position, e.stream_version, e.event_type, e.schema_version, e.data)
            for e in store.read_stream("Account-1", **kw)
        ]

    for kw in ({}, {"from_version": 3}, {"to_version": 2}, {"from_version": 2, "to_version": 7}, {"as_of": cut},
               {"from_version": 9}):  # fmt: skip
        assert short(**kw) == full(**kw)
    assert len(short()) == 8
    with store.reader() as tx:
        assert tx.read_stream_data("Missing-1") == []
    # Without a transaction around them, statements see what commits in between.
    with store.reader(consistent=False) as tx:
        assert [r[1] for r in tx.read_stream_data("Account-2")] == [1, 2]
        seed(store, "Account-2", 1)
        assert [r[1] for r in tx.read_stream_data("Account-2")] == [1, 2, 3]


def test_unicode_round_trip(store: Store) -> None:
    data = {
        "name": "Zoë Ødegård — 東京 🚀 مرحبا",
        "combining": "e\u0301",
        "escapes": 'quote " backslash \\ newline \n tab \t',
        "ключ": ["λ", "∑", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢"],
        "nested": {"deep": [{"x": "ü"}, None, True, 1.5, -7]},
    }
    meta = {"actor": "José", "correlation_id": "κ-1"}
    result = store.append("Konto-Ä-1", [NewEvent("Geöffnet✓", data, meta)])
    (stored,) = store.read_stream("Konto-Ä-1")
    assert (stored.data, stored.metadata, stored.event_type) == (data, meta, "Geöffnet✓")
    assert stored.category == "Konto"
    assert store.read_all(categories=["Konto"], types=["Geöffnet✓"]) == [stored]
    assert stored.global_position == result.positions[0]
    assert [s.stream_id for s in store.list_streams()] == ["Konto-Ä-1"]


def test_quotes_and_backslashes_round_trip_in_every_field(store: Store) -> None:
    # One event, its own transaction: the path that writes its values into the statement.
    tricky = "O'Brien \\' '' \\\\ '); DROP TABLE events; --"
    data = {tricky: tricky, "escaped quote": '\\"', "ends in": "\\"}
    result = store.append(f"Quote-{tricky}", [NewEvent(f"Said {tricky}", data, {"actor": tricky})])
    (stored,) = store.read_stream(f"Quote-{tricky}")
    assert (stored.stream_id, stored.event_type, stored.data, stored.metadata) == (
        f"Quote-{tricky}", f"Said {tricky}", data, {"actor": tricky}
    )  # fmt: skip
    assert (stored.global_position, stored.stream_version) == (result.positions[0], result.version)
    assert stored.recorded_at == result.recorded_at


def test_appends_go_on_after_rollbacks_around_and_inside_their_transaction(store: Store) -> None:
    # A driver may drop statements it prepared after a rollback (psycopg does, once it has
    # prepared some of its own: hence the repeated reads first).
    def reads() -> None:
        for _ in range(8):
            store.read_stream("Doc-1")

    reads()
    with pytest.raises(RuntimeError), store.transaction(appending=True) as tx:
        tx.append("Doc-1", [ev(1)])
        raise RuntimeError("rolled back")
    store.append("Doc-1", [ev(1)])
    with store.transaction(appending=True) as tx:
        tx.append("Doc-1", [ev(2)])
        for _ in range(8):
            tx.read_stream("Doc-1")
        with pytest.raises(RuntimeError), tx.savepoint():
            tx.append("Doc-1", [ev(3)])
            raise RuntimeError("only this")
        tx.append("Doc-1", [ev(3)])
        tx.append("Doc-2", [ev(1)])
    reads()
    with store.reader(snapshot=True) as tx:
        tx.read_stream("Doc-1")
    store.append("Doc-2", [ev(2)])
    assert [(e.stream_id, e.stream_version) for e in all_events(store)] == [
        ("Doc-1", 1), ("Doc-1", 2), ("Doc-1", 3), ("Doc-2", 1), ("Doc-2", 2)
    ]  # fmt: skip


def test_appends_go_on_when_prepared_statements_vanish_unnoticed(store: Store) -> None:
    if store.backend != "postgres":
        pytest.skip("only PostgreSQL appends through statements prepared on the connection")
    store.append("Doc-1", [ev(1)])

    def deallocate_all() -> None:  # behind the store's back, on the connection it appends on
        with store._connection() as conn:  # type: ignore[attr-defined]
            assert conn.pgconn.exec_(b"DEALLOCATE ALL").command_status == b"DEALLOCATE ALL"

    deallocate_all()
    store.append("Doc-1", [ev(2)])
    deallocate_all()
    with store.transaction(appending=True) as tx:
        tx.append("Doc-1", [ev(3)])
    assert [e.stream_version for e in store.read_stream("Doc-1")] == [1, 2, 3]


def test_a_connection_lost_mid_use_is_a_database_error_without_the_password(store_url: str) -> None:
    if not store_url.startswith("postgresql"):
        pytest.skip("SQLite has no connection to lose")
    import psycopg

    url = store_url.replace("postgres@", "postgres:s3cret-pw@", 1)
    with open_store(url) as store, psycopg.connect(store_url.split("?")[0], autocommit=True) as admin:

        def lose(conn: Any) -> None:
            pid = conn.pgconn.backend_pid
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

        with pytest.raises(DatabaseError, match="^postgresql: ") as lost:
            with store.transaction(appending=True) as tx:
                lose(tx.conn)  # type: ignore[attr-defined]
                tx.append("Doc-1", [ev(1)])
        assert "s3cret" not in str(lost.value)
        store.append("Doc-1", [ev(1)])
        with store._connection() as conn:  # type: ignore[attr-defined]  # the one the next append gets
            lose(conn)
        with pytest.raises(DatabaseError, match="^postgresql: ") as lost:
            store.append("Doc-1", [ev(2)])
        assert "s3cret" not in str(lost.value)
        store.append("Doc-1", [ev(2)])  # the lost connection went back to the pool, to be replaced
        assert [e.stream_version for e in store.read_stream("Doc-1")] == [1, 2]


def test_one_event_with_a_nul_is_rejected(store: Store) -> None:
    with pytest.raises(ValidationError, match="NUL"):
        store.append("Doc-1", [NewEvent("Written", {"s": "a\x00b"})])
    assert all_events(store) == []


@pytest.mark.parametrize(
    ("stream_id", "event"),
    [
        pytest.param("Doc-1", NewEvent("Written", {"s": "a\x00b"}), id="data-value"),
        pytest.param("Doc-1", NewEvent("Written", {"k\x00": 1}), id="data-key"),
        pytest.param("Doc-1", NewEvent("Written", {}, {"actor": "\x00"}), id="metadata"),
        pytest.param("Doc-1", NewEvent("Writ\x00ten", {}), id="type"),
        pytest.param("Doc-\x001", NewEvent("Written", {}), id="stream-id"),
    ],
)
def test_nul_characters_are_rejected_on_every_backend(store: Store, stream_id: str, event: NewEvent) -> None:
    # PostgreSQL cannot hold NUL in text or jsonb; SQLite could, but a store must be
    # importable into the other backend, so both refuse it the same way.
    seed(store, "Doc-1", 1)
    before = all_events(store)
    with pytest.raises(ValidationError, match="NUL"):
        store.append(stream_id, [ev(1), event])
    assert all_events(store) == before


def test_text_that_merely_looks_like_an_escaped_nul_round_trips(store: Store) -> None:
    data = {"literal": "\\u0000", "backslashes": "\\\\u0000 \\", "\\u0000": "key"}
    store.append("Doc-1", [NewEvent("Written", data, {"note": "\\u0000"})])
    (stored,) = store.read_stream("Doc-1")
    assert (stored.data, stored.metadata) == (data, {"note": "\\u0000"})


def test_large_payload_round_trip(store: Store) -> None:
    data = {
        "blob": "x" * 1_200_000 + "é",
        "rows": [{"i": i, "s": f"row-{i}"} for i in range(20_000)],
    }
    store.append("Big-1", [NewEvent("Loaded", data)])
    store.append("Big-1", [ev(1)])
    (stored, small) = store.read_stream("Big-1")
    assert stored.data == data
    assert small.data == {"n": 1}
    assert store.read_all()[0].data == data


def test_timestamps_are_utc(store: Store) -> None:
    before = datetime.now(UTC)
    result = store.append("Clock-1", [ev(1), ev(2)])
    after = datetime.now(UTC)
    events = store.read_stream("Clock-1")
    for e in events:
        assert e.recorded_at.utcoffset() == timedelta(0)
        assert before - timedelta(seconds=5) <= e.recorded_at <= after + timedelta(seconds=5)
        assert e.to_dict()["recorded_at"].endswith("Z")
    (info,) = store.list_streams()
    assert info.created_at.utcoffset() == timedelta(0) and info.updated_at.utcoffset() == timedelta(0)
    assert result.positions == [e.global_position for e in events]


def test_list_streams_head_and_counts(store: Store) -> None:
    assert store.head() == 0
    assert store.list_streams() == []
    assert store.counts()["events"] == 0
    p1 = seed(store, "Account-1", 2)
    p2 = seed(store, "User-1", 1)
    p3 = seed(store, "Account-2", 1)
    p4 = seed(store, "Account-1", 1)
    assert store.head() == p4[-1]

    streams = store.list_streams()
    assert [(s.stream_id, s.category, s.version) for s in streams] == [
        ("Account-1", "Account", 3),
        ("User-1", "User", 1),
        ("Account-2", "Account", 1),
    ]
    account1 = streams[0]
    assert (account1.first_position, account1.last_position) == (p1[0], p4[0])
    assert account1.created_at <= account1.updated_at
    assert account1.to_dict()["created_at"].endswith("Z")
    assert [s.stream_id for s in store.list_streams(category="Account")] == ["Account-1", "Account-2"]
    assert [s.stream_id for s in store.list_streams(limit=2)] == ["Account-1", "User-1"]
    assert store.list_streams(category="Nope") == []
    assert (streams[1].first_position, streams[2].last_position) == (p2[0], p3[0])

    counts = store.counts()
    assert counts["events"] == 5
    assert counts["snapshots"] == 0 and counts["processed_commands"] == 0


# -- followers: reads in a transaction, wake-ups --------------------------------------------


def test_read_all_in_a_transaction_reads_what_the_store_reads(store: Store) -> None:
    seed(store, "Order-1", 3)
    seed(store, "Invoice-1", 2, "Billed")
    with store.transaction() as tx:
        assert tx.read_all(0, 100) == store.read_all(0, 100)
        assert tx.read_all(1, 2, categories=["Order"]) == store.read_all(1, 2, categories=["Order"])
        assert [e.event_type for e in tx.read_all(0, 100, types=["Billed"])] == ["Billed", "Billed"]
        assert tx.read_all(5, 100) == []


def test_wakeups_tell_a_follower_of_appends_where_the_backend_can(store: Store) -> None:
    assert store.poll_interval > 0
    assert store.durability()
    with store.wakeups() as wakeups:
        wakeups.wait(0)  # a backend that notifies starts listening here
        assert wakeups.wait(0.05) is False  # nothing appended: the wait runs out
        seed(store, "Order-1", 1)
        if store.backend == "postgres":
            assert wakeups.wait(10) is True  # NOTIFY after the commit
        else:
            assert wakeups.wait(0.05) is False  # SQLite cannot notify: followers poll


# -- schema -----------------------------------------------------------------------------


def test_migrate_is_idempotent(store: Store, store_url: str) -> None:
    assert store.schema_version() == SCHEMA_VERSION
    seed(store, "Account-1", 2)
    assert store.migrate() == SCHEMA_VERSION
    assert store.migrate() == SCHEMA_VERSION
    with open_store(store_url) as again:  # opening migrates too
        assert again.schema_version() == SCHEMA_VERSION
        assert again.stream_version("Account-1") == 2
    assert store.stream_version("Account-1") == 2


def test_unmigrated_store_reports_version_zero(store_url: str) -> None:
    with open_store(store_url, migrate=False) as raw:
        assert raw.schema_version() == 0
        with pytest.raises(NotFoundError):
            raw.counts()
        assert raw.migrate() == SCHEMA_VERSION
        assert raw.migrate() == SCHEMA_VERSION
        assert raw.schema_version() == SCHEMA_VERSION
        assert raw.head() == 0


def test_ddl_describes_the_tables(store: Store) -> None:
    ddl = store.ddl()
    assert ddl.strip()
    for table in ("events", "snapshots", "checkpoints", "outbox", "sagas", "deadlines", "processed_commands"):
        assert f"CREATE TABLE IF NOT EXISTS {table}" in ddl


def test_stores_at_different_urls_are_independent(store: Store, store_url_factory: Callable[[], str]) -> None:
    seed(store, "Account-1", 3)
    with open_store(store_url_factory()) as other:
        assert other.head() == 0
        other.append("Account-1", [ev(1)], NO_STREAM)
        assert other.stream_version("Account-1") == 1
    assert store.stream_version("Account-1") == 3


# -- import -----------------------------------------------------------------------------


def test_import_keeps_ids_and_versions_and_reimport_is_a_noop(
    store: Store, store_url_factory: Callable[[], str]
) -> None:
    store.append("Account-1", [ev(1), ev(2)], NO_STREAM)
    store.append("User-1", [NewEvent("Registered", {"u": "ü"}, {"actor": "a"}, schema_version=3)])
    store.append("Account-1", [ev(3)], 2)
    exported = all_events(store)

    with open_store(store_url_factory()) as target:
        target.append("Other-1", [ev(0)])  # the target already has its own history
        with target.transaction() as tx:
            assert tx.import_events(exported) == len(exported)
        imported = [e for e in all_events(target) if e.stream_id != "Other-1"]
        key = [(e.event_id, e.stream_id, e.stream_version, e.event_type, e.schema_version, e.data, e.metadata)
               for e in exported]  # fmt: skip
        assert [
            (e.event_id, e.stream_id, e.stream_version, e.event_type, e.schema_version, e.data, e.metadata)
            for e in imported
        ] == key
        assert [e.recorded_at for e in imported] == [e.recorded_at for e in exported]

        head = target.head()
        with target.transaction() as tx:
            assert tx.import_events(exported) == 0
        assert target.head() == head
        # Appends continue the imported versions.
        assert target.append("Account-1", [ev(4)], 3).version == 4


def test_import_rejects_conflicts_and_gaps_writing_nothing(
    store: Store, store_url_factory: Callable[[], str]
) -> None:
    store.append("Account-1", [ev(1), ev(2)])
    exported = all_events(store)
    with open_store(store_url_factory()) as target:
        target.append("Account-1", [ev(9)])
        with pytest.raises(ConcurrencyError):  # version 1 is taken by another event
            with target.transaction() as tx:
                tx.import_events(exported)
        assert target.head() == 1 and target.stream_version("Account-1") == 1
    with open_store(store_url_factory()) as target:
        with pytest.raises(ConcurrencyError):  # starts at version 2: a gap
            with target.transaction() as tx:
                tx.import_events(exported[1:])
        assert target.head() == 0
    moved = dataclasses.replace(exported[0], stream_version=5)
    with pytest.raises(DuplicateEventError):
        with store.transaction() as tx:
            tx.import_events([moved])
    assert all_events(store) == exported


# -- snapshots and processed commands -----------------------------------------------------


def test_snapshots_save_load_overwrite_list_delete(store: Store) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    with store.reader() as tx:
        assert tx.snapshots.load("Account-1") is None
    with store.transaction() as tx:
        tx.snapshots.save(Snapshot("Account-1", "Account", 5, "1", {"balance": 10, "ü": [1]}, now))
        tx.snapshots.save(Snapshot("Account-2", "Account", 1, "1", {"balance": 0}, now))
    with store.reader() as tx:
        snap = tx.snapshots.load("Account-1")
    assert snap is not None
    assert (snap.stream_id, snap.aggregate_type, snap.version, snap.schema_version, snap.state) == (
        "Account-1", "Account", 5, "1", {"balance": 10, "ü": [1]},
    )  # fmt: skip
    assert snap.taken_at == now and snap.taken_at.utcoffset() == timedelta(0)

    later = now + timedelta(minutes=1)
    with store.transaction() as tx:
        tx.snapshots.save(Snapshot("Account-1", "AccountV2", 9, "2", {"balance": 99}, later))
    with store.reader() as tx:
        snap = tx.snapshots.load("Account-1")
        listed = tx.snapshots.select()
    assert snap is not None and (snap.aggregate_type, snap.version, snap.schema_version, snap.state) == (
        "AccountV2", 9, "2", {"balance": 99},
    )  # fmt: skip
    assert snap.taken_at == later
    assert [s.stream_id for s in listed] == ["Account-1", "Account-2"]
    assert store.counts()["snapshots"] == 2

    with store.transaction() as tx:
        assert tx.snapshots.delete("Account-1") == 1
        assert tx.snapshots.delete("Account-1") == 0
    with store.reader() as tx:
        assert tx.snapshots.load("Account-1") is None
        assert [s.stream_id for s in tx.snapshots.select(limit=5)] == ["Account-2"]
    with store.transaction() as tx:
        assert tx.snapshots.delete() == 1
    assert store.counts()["snapshots"] == 0


def test_read_from_snapshot_gives_the_usable_snapshot_and_the_events_after_it(store: Store) -> None:
    store.append("Account-1", [ev(n) for n in range(1, 6)])

    def read(schema: str, to: int | None = None) -> tuple[int, Any, list[tuple[int, int]]]:
        with store.reader(consistent=False) as tx:
            version, state, rows = tx.read_from_snapshot("Account-1", schema, to)
        state = orjson.loads(state) if isinstance(state, str | bytes) else state
        return (
            version,
            state,
            [(r[1], (orjson.loads(r[4]) if isinstance(r[4], str) else r[4])["n"]) for r in rows],
        )

    everything = [(v, v) for v in range(1, 6)]
    assert read("s1") == (0, None, everything)  # no snapshot yet
    with store.transaction() as tx:
        tx.snapshots.save(Snapshot("Account-1", "Account", 3, "s1", {"total": 6}, datetime.now(UTC)))
    assert read("s1") == (3, {"total": 6}, [(4, 4), (5, 5)])
    assert read("s1", 4) == (3, {"total": 6}, [(4, 4)])
    assert read("s1", 3) == (3, {"total": 6}, [])
    assert read("s1", 2) == (0, None, everything[:2])  # the snapshot is past the version asked for
    assert read("s2") == (0, None, everything)  # taken with another aggregate shape
    assert read("s1", 9) == (3, {"total": 6}, [(4, 4), (5, 5)])
    with store.reader(consistent=False) as tx:
        assert tx.read_from_snapshot("Account-2", "s1") == (0, None, [])


def test_processed_commands(store: Store) -> None:
    result = {"stream_id": "Account-1", "positions": [1, 2], "note": "ünïcode"}
    with store.reader() as tx:
        assert tx.commands.processed("cmd-1") is None
    with store.transaction() as tx:
        tx.append("Account-1", [ev(1), ev(2)])
        tx.commands.record("cmd-1", "Account-1", result)
    with store.reader() as tx:
        assert tx.commands.processed("cmd-1") == result
        assert tx.commands.processed("cmd-2") is None
    assert store.counts()["processed_commands"] == 1
    # A second record of one id (a racing dispatcher) is a conflict the dispatcher retries,
    # not a driver error, and its transaction writes nothing.
    with pytest.raises(CommandRaceError, match="cmd-1"):
        with store.transaction() as tx:
            tx.append("Account-1", [ev(3)])
            tx.commands.record("cmd-1", "Account-1", {"other": True})
    with store.reader() as tx:
        assert tx.commands.processed("cmd-1") == result
        assert tx.stream_version("Account-1") == 2


# -- the store against an in-memory model -------------------------------------------------

STREAMS = ["Acc-1", "Acc-2", "Usr-1", "Log"]
TYPES = ["Opened", "Changed", "Closed"]


class StoreModel(RuleBasedStateMachine):
    """Random appends (any expected version, replays) and reads, checked against lists in memory.

    One store serves every example: each example names its streams with a fresh suffix and
    only reads positions above the head it started from, so no example sees another's rows.
    """

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store
        self.suffix = uuid.uuid4().hex[:8]
        self.base = self.store.head()
        self.streams: dict[str, list[StoredEvent]] = {}
        self.log: list[StoredEvent] = []
        self.appended: list[tuple[str, NewEvent]] = []

    def sid(self, name: str) -> str:
        return f"{name}{self.suffix}" if "-" in name else f"{name}-{self.suffix}"

    @initialize()
    def empty(self) -> None:
        assert self.store.read_all(self.base) == []

    @rule(
        name=st.sampled_from(STREAMS),
        types=st.lists(st.sampled_from(TYPES), min_size=1, max_size=3),
        expected=st.one_of(
            st.sampled_from([ANY, NO_STREAM, EXISTS, "current"]), st.integers(min_value=0, max_value=6)
        ),
        value=st.integers(-5, 5),
    )
    def append(self, name: str, types: list[str], expected: ExpectedVersion | str, value: int) -> None:
        stream_id = self.sid(name)
        current = len(self.streams.get(stream_id, []))
        if expected == "current":
            expected = current
        if expected == NO_STREAM:
            ok = current == 0
        elif expected == EXISTS:
            ok = current > 0
        else:
            ok = expected in (ANY, current)
        batch = [
            NewEvent(t, {"v": value, "i": i}, {"k": i}, event_id=str(uuid.uuid4()))
            for i, t in enumerate(types)
        ]
        if not ok:
            with pytest.raises(ConcurrencyError) as info:
                self.store.append(stream_id, batch, expected)  # type: ignore[arg-type]
            assert (info.value.expected, info.value.actual) == (expected, current)
            return
        result = self.store.append(stream_id, batch, expected)  # type: ignore[arg-type]
        assert not result.duplicate
        assert result.version == current + len(batch)
        last = self.log[-1].global_position if self.log else self.base
        assert last < result.positions[0] and result.positions == sorted(set(result.positions))
        stored = self.store.read_stream(stream_id, from_version=current + 1)
        assert [e.global_position for e in stored] == result.positions
        for new, e in zip(batch, stored, strict=True):
            assert (e.event_id, e.event_type, e.data, e.metadata) == (
                new.event_id,
                new.type,
                new.data,
                new.metadata,
            )
        self.streams.setdefault(stream_id, []).extend(stored)
        self.log.extend(stored)
        self.appended.extend((stream_id, n) for n in batch)

    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        if not self.appended:
            return
        stream_id, new = data.draw(st.sampled_from(self.appended))
        original = next(e for e in self.log if e.event_id == new.event_id)
        result = self.store.append(stream_id, [new], data.draw(st.sampled_from([ANY, NO_STREAM, 0])))
        assert result.duplicate and result.positions == [original.global_position]

    @rule(name=st.sampled_from(STREAMS), start=st.integers(1, 6), span=st.none() | st.integers(0, 4))
    def read_stream(self, name: str, start: int, span: int | None) -> None:
        stream_id = self.sid(name)
        model = self.streams.get(stream_id, [])
        to = None if span is None else start + span
        got = self.store.read_stream(stream_id, from_version=start, to_version=to)
        assert got == [
            e for e in model if e.stream_version >= start and (to is None or e.stream_version <= to)
        ]
        assert self.store.stream_version(stream_id) == len(model)

    @rule(
        skip=st.integers(0, 30), limit=st.integers(1, 8), category=st.none() | st.sampled_from(["Acc", "Usr"])
    )
    def read_all(self, skip: int, limit: int, category: str | None) -> None:
        after = self.log[skip - 1].global_position if 0 < skip <= len(self.log) else self.base
        cats = None if category is None else [category]
        got = self.store.read_all(after, limit, categories=cats)
        model = [
            e for e in self.log if e.global_position > after and (category is None or e.category == category)
        ]
        assert got == model[:limit]

    @invariant()
    def head_matches(self) -> None:
        assert self.store.head() == (self.log[-1].global_position if self.log else self.base)


def test_store_matches_in_memory_model(store: Store) -> None:
    class OnThisStore(StoreModel):
        def __init__(self) -> None:
            super().__init__(store)

    run_state_machine_as_test(
        OnThisStore,
        settings=settings(
            max_examples=50,
            stateful_step_count=30,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
