"""6. Outbox drain rate: `outbox_messages` pending messages delivered, `outbox_batch` at a
time, to a JSONL file (fsync per batch) and to NATS JetStream (each message acknowledged,
deduplicated on Nats-Msg-Id), timed from the start of the drain (sink connection
included) to the last message marked delivered. SQLite runs at synchronous=FULL for all.

raw: SELECT the next batch, send it, UPDATE it delivered (one commit per batch).
eventsourcing has no outbox; its contender is the closest thing it offers, a relay
paging the notification log and recording its position with a tracking recorder after
each batch. cqrsctl: `services.outbox.drain(store, open_sink(url))`, which leases each
batch, sends it, and records the outcome per message.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import orjson

from .. import raw as rawdb
from ..core import Ctx, Measurement, Row, Unavailable, needs_cqrsctl
from ..workload import amount, ledger, stream_id

ACCOUNTS = 100


def _payload(k: int, topic: str) -> dict[str, Any]:
    sid = stream_id(k % ACCOUNTS)
    return {
        "message_id": f"m-{k}",
        "topic": topic,
        "key": sid,
        "event_id": f"e-{k}",
        "event_type": "MoneyDeposited",
        "schema_version": 1,
        "stream_id": sid,
        "stream_version": k // ACCOUNTS + 1,
        "global_position": k + 1,
        "recorded_at": "2026-01-01T00:00:00Z",
        "data": {"amount": str(amount(k))},
    }


# -- sinks for the raw and eventsourcing contenders -------------------------------------------


class FileOut:
    """Append JSON lines and fsync once per batch, as cqrsctl's file sink does."""

    def __init__(self, path: str) -> None:
        self.file = open(path, "ab")  # noqa: SIM115 - held for the drain

    def send(self, messages: list[tuple[str, str, str, bytes]]) -> None:
        self.file.write(
            b"".join(
                orjson.dumps({"message_id": m, "topic": t, "key": k, "payload": orjson.Fragment(p)}) + b"\n"
                for m, t, k, p in messages
            )
        )
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


class NatsOut:
    """Publish a batch pipelined to JetStream, then wait for every acknowledgement."""

    def __init__(self, url: str) -> None:
        import nats

        self.loop = asyncio.new_event_loop()
        self.nc = self.loop.run_until_complete(nats.connect(url, allow_reconnect=False))
        self.js = self.nc.jetstream(timeout=10)

    async def _publish(self, messages: list[tuple[str, str, str, bytes]]) -> None:
        futures = [
            await self.js.publish_async(t, p, headers={"Nats-Msg-Id": m, "Key": k}) for m, t, k, p in messages
        ]
        await asyncio.gather(*futures)

    def send(self, messages: list[tuple[str, str, str, bytes]]) -> None:
        self.loop.run_until_complete(self._publish(messages))

    def close(self) -> None:
        self.loop.run_until_complete(self.nc.close())
        self.loop.close()


@contextmanager
def nats_stream(url: str, name: str, subject: str) -> Iterator[dict[str, int]]:
    """A JetStream stream for one run, deleted afterwards; yields a dict that then holds
    how many messages the stream had."""
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 4222), timeout=2).close()
    except OSError as exc:
        raise Unavailable(f"NATS not reachable at {url}: {exc}") from None
    import nats

    async def create() -> None:
        nc = await nats.connect(url, allow_reconnect=False)
        await nc.jetstream().add_stream(name=name, subjects=[subject])
        await nc.close()

    async def count_and_delete() -> int:
        nc = await nats.connect(url, allow_reconnect=False)
        js = nc.jetstream()
        info = await js.stream_info(name)
        await js.delete_stream(name)
        await nc.close()
        return int(info.state.messages)

    asyncio.run(create())
    result = {"messages": -1}
    try:
        yield result
    finally:
        result["messages"] = asyncio.run(count_and_delete())


@contextmanager
def _target(ctx: Ctx, db: Any, sink: str) -> Iterator[tuple[str, str]]:
    """(url for cqrsctl, topic) for this run's sink; checks the delivery count afterwards."""
    n = ctx.sizes["outbox_messages"]
    if sink == "file":
        path = db.file(".jsonl")
        yield f"file://{path}", f"bench.{db.token}.account"
        with open(path, "rb") as f:
            lines = sum(1 for _ in f)
        if lines != n:
            raise RuntimeError(f"the file holds {lines} messages, expected {n}")
    else:
        stream = f"BENCH_{db.token}"
        with nats_stream(ctx.config.nats_url, stream, f"bench.{db.token}.>") as result:
            yield f"{ctx.config.nats_url}?stream={stream}", f"bench.{db.token}.account"
        found = result["messages"]
        if found != n:
            raise RuntimeError(f"the JetStream stream holds {found} messages, expected {n}")


def _out(ctx: Ctx, sink: str, url: str) -> Any:
    return FileOut(url[len("file://") :]) if sink == "file" else NatsOut(ctx.config.nats_url)


# -- contenders -----------------------------------------------------------------------------


def raw(ctx: Ctx, sink: str) -> dict[str, float]:
    backend, n, batch = ctx.backend, ctx.sizes["outbox_messages"], ctx.sizes["outbox_batch"]
    pending = "NOT delivered" if backend == "postgres" else "delivered = 0"
    payload_col = "payload::text" if backend == "postgres" else "payload"
    select = rawdb.q(
        backend, f"SELECT seq, topic, key, {payload_col} FROM outbox WHERE {pending} ORDER BY seq LIMIT ?"
    )
    done = "true" if backend == "postgres" else "1"
    mark = rawdb.q(backend, f"UPDATE outbox SET delivered = {done} WHERE seq BETWEEN ? AND ? AND {pending}")
    with ctx.fresh("FULL") as db, _target(ctx, db, sink) as (url, topic):
        conn = db.raw()
        rawdb.create_schema(conn, backend)
        rows = []
        for k in range(n):
            p = _payload(k, topic)
            rows.append((topic, p["key"], orjson.dumps(p).decode()))
        rawdb.begin(conn, backend)
        cur = conn.cursor()
        cur.executemany(rawdb.q(backend, "INSERT INTO outbox (topic, key, payload) VALUES (?, ?, ?)"), rows)
        conn.execute("COMMIT")
        started = time.perf_counter()
        out = _out(ctx, sink, url)
        try:
            while True:
                found = conn.execute(select, (batch,)).fetchall()
                if not found:
                    break
                out.send([(str(seq), t, k, p.encode()) for seq, t, k, p in found])
                rawdb.begin(conn, backend)
                conn.execute(mark, (found[0][0], found[-1][0]))
                conn.execute("COMMIT")
        finally:
            out.close()
        elapsed = time.perf_counter() - started
    return {"rate": n / elapsed}


def eventsourcing(ctx: Ctx, sink: str) -> dict[str, float]:
    from eventsourcing.persistence import Tracking

    from ..domain_es import Bank, StoredEvents

    n, batch = ctx.sizes["outbox_messages"], ctx.sizes["outbox_batch"]
    with ctx.fresh() as db, _target(ctx, db, sink) as (url, topic):
        app = db.closing(Bank(env=db.es_env()))
        make = StoredEvents(app)
        versions: dict[int, int] = {}
        seeded = []
        for i, kind, value in ledger(n, ACCOUNTS):
            v = versions[i] = versions.get(i, 0) + 1
            seeded.append(make.opened(i) if kind == "AccountOpened" else make.deposit(i, v, value))
        app.recorder.insert_events(seeded)
        tracking = app.factory.tracking_recorder()
        relay = "BenchRelay"
        started = time.perf_counter()
        out = _out(ctx, sink, url)
        try:
            start = (tracking.max_tracking_id(relay) or 0) + 1
            while True:
                page = app.recorder.select_notifications(start, batch)
                if not page:
                    break
                out.send(
                    [
                        (f"{e.originator_id}:{e.originator_version}", topic, str(e.originator_id), e.state)
                        for e in page
                    ]
                )
                tracking.insert_tracking(Tracking(relay, page[-1].id))
                start = page[-1].id + 1
        finally:
            out.close()
        elapsed = time.perf_counter() - started
    return {"rate": n / elapsed}


def cqrsctl(ctx: Ctx, sink: str) -> dict[str, float]:
    with needs_cqrsctl("outbox"):
        from cqrsctl import open_store
        from cqrsctl.services.outbox import drain
        from cqrsctl.sinks import open_sink
        from cqrsctl.store.base import NewMessage

    n, batch = ctx.sizes["outbox_messages"], ctx.sizes["outbox_batch"]
    with ctx.fresh("FULL") as db, _target(ctx, db, sink) as (url, topic):
        store = db.closing(open_store(db.cqrsctl_url()))
        now = datetime.now(UTC)
        messages = []
        for k in range(n):
            p = _payload(k, topic)
            headers = {"event-type": p["event_type"]}
            messages.append(NewMessage(p["message_id"], k + 1, topic, p["key"], p, headers, now))
        for i in range(0, n, 1000):
            with store.transaction() as tx:
                tx.outbox.add(messages[i : i + 1000])
        started = time.perf_counter()
        report = drain(store, open_sink(url), batch=batch)
        elapsed = time.perf_counter() - started
        if report.delivered != n or report.failed or report.dead or report.error:
            raise RuntimeError(f"drain: {report.summary()}")
    return {"rate": n / elapsed}


MEASUREMENT = Measurement(
    name="outbox",
    title="Outbox drain rate",
    contenders={
        f"{who}:{sink}": partial(fn, sink=sink)
        for who, fn in (("raw", raw), ("eventsourcing", eventsourcing), ("cqrsctl", cqrsctl))
        for sink in ("file", "nats")
    },
    rows=[
        Row(
            "outbox drain → JSONL file",
            "rate",
            "messages/s",
            "raw:file",
            "eventsourcing:file",
            "cqrsctl:file",
        ),
        Row(
            "outbox drain → NATS JetStream",
            "rate",
            "messages/s",
            "raw:nats",
            "eventsourcing:nats",
            "cqrsctl:nats",
        ),
    ],
)
