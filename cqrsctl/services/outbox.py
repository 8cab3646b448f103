"""The transactional outbox: rows written with the events, and the relay that delivers them.

Writing: :func:`outbox_messages` turns a dispatch's appended events into outbox rows; the
dispatcher inserts them in the same transaction as the events, so a message exists if and
only if its event does.

Delivering: :func:`drain` leases batches of due messages (see
`Outbox.claim`), sends them to a :class:`~cqrsctl.sinks.Sink`, and records
the outcome. Delivery is at least once: a crash after a send and before the outcome is
recorded sends that batch again, with the same message id. Overlapping drains never hold
the same message, and order per (topic, key) is kept: a message waits while an earlier one
of its key is leased or backing off. A dead message no longer holds its key back.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson

from ..errors import DeliveryError, IncompleteError, NotFoundError, UsageError
from ..sinks import Sink, SinkUnavailable
from ..store import AppendResult, NewEvent, Store, StoredEvent, iso
from ..store.base import OUTBOX_STATUSES, NewMessage, OutboxFailure, OutboxMessage, Transaction, utcnow
from . import journal
from .owners import dead_here, owner_id

if TYPE_CHECKING:
    from ..app import App

# -- writing ----------------------------------------------------------------------------


def outbox_messages(
    app: App, stream_id: str, events: Sequence[NewEvent], appended: AppendResult
) -> list[NewMessage]:
    """The outbox rows for events just appended to `stream_id` (those the app publishes).

    The message id is the event id, so a consumer can dedupe on either."""
    if appended.duplicate:
        return []  # replayed append: its rows were written the first time
    recorded = appended.recorded_at or utcnow()
    first = appended.version - len(events) + 1
    out = []
    for i, e in enumerate(events):
        stored = StoredEvent(
            appended.positions[i],
            stream_id,
            first + i,
            appended.event_ids[i],
            e.type,
            e.schema_version,
            e.data,
            e.metadata,
            recorded,
        )
        rule = app.publication(stored)
        if rule is None:
            continue
        topic, key = rule.route(stored)
        meta = e.metadata
        payload = {
            "message_id": stored.event_id,
            "topic": topic,
            "key": key,
            "event_id": stored.event_id,
            "event_type": e.type,
            "schema_version": e.schema_version,
            "stream_id": stream_id,
            "stream_version": stored.stream_version,
            "global_position": stored.global_position,
            "recorded_at": iso(recorded),
            "correlation_id": meta.get("correlation_id"),
            "causation_id": meta.get("causation_id"),
            "metadata": {k: v for k, v in meta.items() if k not in ("correlation_id", "causation_id")},
            "data": e.data,
        }
        headers = {"event-type": e.type}
        for name in ("correlation_id", "causation_id"):
            if meta.get(name):
                headers[name.replace("_", "-")] = str(meta[name])
        out.append(
            NewMessage(stored.event_id, stored.global_position, topic, key, payload, headers, recorded)
        )
    return out


def write_outbox(
    tx: Transaction, app: App, stream_id: str, events: Sequence[NewEvent], appended: AppendResult
) -> None:
    """Insert the outbox rows for an append, inside the caller's transaction."""
    messages = outbox_messages(app, stream_id, events, appended)
    if messages:
        tx.outbox.add(messages)


# -- delivering -------------------------------------------------------------------------


@dataclass(frozen=True)
class Backoff:
    """Delay before attempt n+1 after n failures: `base * 2**(n-1)`, at most `cap`, with
    "equal jitter" (a random point in the upper half) so failed messages spread out."""

    base: float = 5.0
    cap: float = 3600.0

    def delay(self, failures: int, rng: Callable[[], float] = random.random) -> float:
        full = min(self.cap, self.base * 2 ** max(0, failures - 1))
        return full / 2 + rng() * full / 2


# A running drain looks for claims of dead same-host runs this often (and at its start).
DEAD_CHECK_SECONDS = 1.0
# A slow sink's outcomes are recorded at least this often, not only once per batch.
RECORD_SECONDS = 1.0
# How long past its deadline a sink call is waited for before it is abandoned.
GRACE_SECONDS = 2.0


def free_crashed_leases(tx: Transaction, now: datetime) -> int:
    """Release leases held by runs on this host whose process has died (a kill -9, a crash),
    so the next run need not wait for the lease to run out."""
    freed = 0
    for owner in tx.outbox.claimers(now):
        if dead_here(owner):
            freed += tx.outbox.release(owner)
    return freed


class SinkStuck(SinkUnavailable):
    """A sink call did not return by its deadline (it was abandoned)."""


def call_sink(sink: Sink, call: Callable[[], Any], seconds: float, what: str) -> Any:
    """`call()` directly when the sink keeps its own deadline, else through `bounded`."""
    if sink.keeps_deadline:
        return call()
    return bounded(call, seconds, what)


def bounded(call: Callable[[], Any], seconds: float, what: str) -> Any:
    """`call()` on a thread of its own, waited for at most `seconds`.

    Whatever a sink's client library does (a peer that trickles its answer, a lock held
    inside the library), the drain gets its thread back in time. A call that overruns is
    abandoned on a daemon thread, so it cannot keep the process alive either."""
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name="cqrsctl-sink", daemon=True).start()
    if not done.wait(seconds):
        raise SinkStuck(f"{what} did not return within {seconds:.1f}s; abandoned")
    if "error" in box:
        raise box["error"]
    return box["value"]


@dataclass
class DrainReport:
    """What one drain did. `exit_code`: 0 all due delivered, 12 some failed or died
    (or the sink was unavailable, or a lease was lost), 13 stopped at a bound (or a signal)
    with work left. `remaining`: messages still due at the end (pending, not dead), however
    the run ended."""

    sink: str
    delivered: int = 0
    failed: int = 0
    dead: int = 0
    released: int = 0
    batches: int = 0
    remaining: int = 0
    stopped: str | None = None  # "max", "timeout", "signal"
    error: str | None = None
    elapsed: float = 0.0
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.delivered / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def exit_code(self) -> int:
        if self.failed or self.dead or self.error:
            return DeliveryError.exit_code
        if self.stopped and self.remaining:
            return IncompleteError.exit_code
        return 0

    def raise_for_status(self) -> None:
        """Raise DeliveryError or IncompleteError when the run was not a clean success."""
        if self.exit_code == DeliveryError.exit_code:
            raise DeliveryError(
                self.error or f"{self.failed} failed and {self.dead} dead-lettered delivering to {self.sink}"
            )
        if self.exit_code == IncompleteError.exit_code:
            raise IncompleteError(f"stopped ({self.stopped}) with {self.remaining} due messages left")

    def summary(self) -> str:
        text = (
            f"delivered {self.delivered}, failed {self.failed}, dead {self.dead}"
            f" to {self.sink} in {self.elapsed:.1f}s ({self.rate:,.0f}/s)"
        )
        if self.stopped:
            text += f"; stopped ({self.stopped}) with {self.remaining} due left"
        elif self.remaining:
            text += f"; {self.remaining} due left (held by other runs)"
        if self.error:
            text += f"; {self.error}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "sink": self.sink,
            "delivered": self.delivered,
            "failed": self.failed,
            "dead": self.dead,
            "released": self.released,
            "batches": self.batches,
            "remaining": self.remaining,
            "stopped": self.stopped,
            "error": self.error,
            "errors": self.errors,
            "elapsed_seconds": round(self.elapsed, 3),
            "rate_per_second": round(self.rate, 1),
            "exit_code": self.exit_code,
        }


def drain(
    store: Store,
    sink: Sink,
    *,
    max_messages: int | None = None,
    timeout: float | None = None,
    batch: int = 100,
    max_attempts: int = 10,
    backoff: Backoff = Backoff(),
    lease: float = 60.0,
    topics: Sequence[str] | None = None,
    stop: Callable[[], bool] | None = None,
    on_progress: Callable[[int], None] | None = None,
    clock: Callable[[], datetime] = utcnow,
    owner: str | None = None,
    keep_open: bool = False,
) -> DrainReport:
    """Deliver due outbox messages to `sink` until none are due, or a bound is hit.

    `max_messages` bounds the deliveries and `timeout` (seconds) the run; `stop()` is
    polled before each send (a signal handler sets it: the send in flight is finished,
    the rest released). Every sink call is abandoned `GRACE_SECONDS` after its deadline,
    and no send may outlast the lease it was made under.
    `clock` gives "now" for due times, leases and back-off (tests pass a fake one).
    The sink is opened on the first message and closed at the end, unless `keep_open`
    (a long-running caller reusing one connection; it is closed anyway when it failed).
    Leases and delivery records are written with `Store.lazy_transaction` (no wait for
    the disk): a power loss or a database crash may forget the last records, and those
    messages are sent again.
    Returns a :class:`DrainReport`; never raises for delivery failures (see its exit_code).
    """
    if batch < 1 or max_attempts < 1 or lease <= 0:
        raise UsageError("batch and max attempts must be at least 1, and the lease positive")
    run = _Run(
        store, sink, owner or owner_id("outbox"), lease, _Policy(max_attempts, backoff), clock, on_progress
    )
    run.bound(max_messages, timeout, stop)
    return run.drain(batch, topics, keep_open)


@dataclass
class _Policy:
    """When a failed message is tried again, and when it is dead."""

    max_attempts: int
    backoff: Backoff


class _Run:
    """One drain: the store, the sink, this run's owner (its claims and leases), the retry
    policy, the clock, the bounds and the report, with the outcomes not yet recorded.
    `drain` claims a batch, opens the sink, delivers, and again, then records and
    releases whatever is left."""

    def __init__(
        self,
        store: Store,
        sink: Sink,
        owner: str,
        lease: float,
        policy: _Policy,
        clock: Callable[[], datetime],
        on_progress: Callable[[int], None] | None,
    ) -> None:
        self.store, self.sink, self.owner, self.lease = store, sink, owner, lease
        self.policy, self.clock, self.on_progress = policy, clock, on_progress
        self.report = DrainReport(sink.name)
        self.started = time.monotonic()
        self.max_messages: int | None = None
        self.timeout: float | None = None
        self.stop: Callable[[], bool] | None = None
        # A send must end this long before the lease does (clock steps, the record's commit).
        self.margin = min(1.0, lease / 10)
        self.until = self.renewed = clock()
        self.stuck = False
        self.delivered: list[int] = []
        self.failures: list[OutboxFailure] = []
        self.handed_back: list[int] = []
        self.last_record = time.monotonic()
        self.next_dead_check = 0.0

    def bound(self, max_messages: int | None, timeout: float | None, stop: Callable[[], bool] | None) -> None:
        self.max_messages, self.timeout, self.stop = max_messages, timeout, stop

    def out_of_bounds(self) -> str | None:
        if self.stop is not None and self.stop():
            return "signal"
        if self.max_messages is not None and self.report.delivered >= self.max_messages:
            return "max"
        if self.timeout is not None and time.monotonic() - self.started >= self.timeout:
            return "timeout"
        return None

    # -- the run ---------------------------------------------------------------------------------

    def drain(self, batch: int, topics: Sequence[str] | None, keep_open: bool) -> DrainReport:
        report = self.report
        try:
            while True:
                report.stopped = self.out_of_bounds()
                if report.stopped:
                    break
                size = (
                    batch if self.max_messages is None else min(batch, self.max_messages - report.delivered)
                )
                claimed = self._claim(size, topics)
                if not claimed:
                    break
                report.batches += 1
                if not self._open_sink(claimed):
                    break
                self.deliver(claimed)
                if report.error or report.stopped:
                    break
        finally:
            self._finish(topics, keep_open)
        return report

    def _claim(self, size: int, topics: Sequence[str] | None) -> list[OutboxMessage]:
        """Record the last batch and claim the next, in one transaction."""
        now = self.clock()
        until = now + timedelta(seconds=self.lease)
        with self.store.lazy_transaction() as tx:
            self.record(tx, now)
            if time.monotonic() >= self.next_dead_check:
                free_crashed_leases(tx, now)
                self.next_dead_check = time.monotonic() + DEAD_CHECK_SECONDS
            claimed = tx.outbox.claim(self.owner, size, now, until, topics)
            # A short claim may be short because a crashed run just died: look once more.
            if len(claimed) < size and free_crashed_leases(tx, now):
                claimed += tx.outbox.claim(self.owner, size - len(claimed), now, until, topics)
        if claimed:
            self.leased(now, until)
        return claimed

    def _open_sink(self, claimed: list[OutboxMessage]) -> bool:
        """Open the sink unless it is open; when it cannot be, give `claimed` back."""
        sink = self.sink
        if sink.is_open:
            return True
        try:
            call_sink(sink, sink.open, 2 * sink.timeout + GRACE_SECONDS, f"connecting to {sink.name}")
            sink.is_open = True
            return True
        except SinkUnavailable as exc:
            self.report.error = sink.scrub(str(exc))
            with self.store.lazy_transaction() as tx:
                tx.outbox.release(self.owner, [m.seq for m in claimed], self.report.error)
            return False

    def _finish(self, topics: Sequence[str] | None, keep_open: bool) -> None:
        """Whatever happened, record what was sent and leave no lease behind."""
        report, sink = self.report, self.sink
        try:
            now = self.clock()
            with self.store.lazy_transaction() as tx:
                self.record(tx, now)
                report.released += tx.outbox.release(self.owner)
                report.remaining = tx.outbox.count_due(now, topics)
        finally:
            if sink.is_open and (not keep_open or report.error):
                if not self.stuck:  # a stuck client may block in close() too: drop it
                    sink.close()
                sink.is_open = False
            report.elapsed = time.monotonic() - self.started

    # -- leases and records ----------------------------------------------------------------------

    def leased(self, now: datetime, until: datetime) -> None:
        self.renewed, self.until = now, until

    def record(self, tx: Transaction, now: datetime) -> None:
        """Write the outcomes gathered since the last record, fenced by this run's owner id."""
        self.last_record = time.monotonic()
        if self.delivered:
            marked = tx.outbox.mark_delivered(self.delivered, now, self.owner)
            if marked < len(self.delivered) and not self.report.error:
                self.report.error = (
                    f"{len(self.delivered) - marked} delivered messages had been claimed by another run"
                    " before their delivery was recorded (this run's lease ran out); that run sends them again"
                )
            self.delivered = []
        if self.failures:
            tx.outbox.mark_failed(self.owner, self.failures)
            self.failures = []
        if self.handed_back:
            self.report.released += tx.outbox.release(self.owner, self.handed_back)
            self.handed_back = []

    def room(self, held: list[OutboxMessage]) -> float | None:
        """Seconds the next send may take: the send timeout, cut so that it ends inside the
        lease. Renews the lease first when too little is left; None when it was lost."""
        now = self.clock()
        left = (self.until - now).total_seconds() - self.margin
        if left < min(self.sink.timeout, self.lease / 2):
            until = now + timedelta(seconds=self.lease)
            with self.store.lazy_transaction() as tx:
                self.record(tx, now)
                kept = tx.outbox.renew(self.owner, [m.seq for m in held], until)
            if kept < len(held):
                self.report.error = self._lost(len(held) - kept, now)
                self.handed_back += [m.seq for m in held]
                return None
            self.renewed, self.until = now, until
            left = self.lease - self.margin
        return min(self.sink.timeout, left)

    def _lost(self, lost: int, now: datetime) -> str:
        since = (now - self.renewed).total_seconds()
        if since >= self.lease:
            why = (
                f"{since:.1f}s passed since it was taken or renewed: the process was paused"
                " or the database answered too slowly"
            )
        else:
            why = (
                f"it still had {self.lease - since:.1f}s left by this machine's clock: the clocks of"
                " the machines running drains disagree, or the messages were requeued"
            )
        return f"lost the lease (--lease {self.lease:g}s) on {lost} claimed messages, unsent: {why}"

    # -- delivery --------------------------------------------------------------------------------

    def deliver(self, claimed: list[OutboxMessage]) -> None:
        """Send `claimed` in chunks the sink takes, in order per key, until done, a bound is
        hit, the lease is lost or the sink fails; what is left is handed back."""
        step = self.sink.batch_size or len(claimed)
        held = list(claimed)  # still leased to this run and unsent, in order
        first = True
        while held:
            if not first:  # the first chunk was just claimed; later ones re-check the bounds
                self.report.stopped = self.out_of_bounds()
                if self.report.stopped:
                    self.handed_back += [m.seq for m in held]
                    return
            first = False
            seconds = self.room(held)
            if seconds is None:
                return
            size = self._chunk_size(held, step)
            chunk, held = held[:size], held[size:]
            results = self._send(chunk, held, seconds)
            if results is None:
                return
            # A sink that stops at a refusal answers for a prefix: the rest was not sent.
            self.handed_back += [m.seq for m in chunk[len(results) :]]
            chunk = chunk[: len(results)]
            blocked = self._outcomes(chunk, results)
            # Later messages of a key that just failed must wait for it: hand them back.
            if blocked:
                self.handed_back += [m.seq for m in held if (m.topic, m.key) in blocked]
                held = [m for m in held if (m.topic, m.key) not in blocked]
            if self.on_progress:
                self.on_progress(len(chunk))
            if held and time.monotonic() - self.last_record >= RECORD_SECONDS:
                with self.store.lazy_transaction() as tx:
                    self.record(tx, self.clock())

    def _chunk_size(self, held: list[OutboxMessage], step: int) -> int:
        if not self.sink.parallel:
            return step
        # Sent at once: at most one message per key.
        keys: set[tuple[str, str]] = set()
        size = 0
        for m in held[:step]:
            if (m.topic, m.key) in keys:
                break
            keys.add((m.topic, m.key))
            size += 1
        return size

    def _send(
        self, chunk: list[OutboxMessage], held: list[OutboxMessage], seconds: float
    ) -> list[str | None] | None:
        """The sink's answers for `chunk` (None: delivered, else the error); None when the
        sink failed, `chunk` and `held` then given back."""
        sink = self.sink
        sink.deadline = time.monotonic() + seconds
        try:
            results: list[str | None] = call_sink(
                sink, partial(sink.send, chunk), seconds + GRACE_SECONDS, f"sending to {sink.name}"
            )
            return results
        except SinkUnavailable as exc:
            self.stuck = isinstance(exc, SinkStuck)
            error = self.report.error = sink.scrub(str(exc))
            self.handed_back += [m.seq for m in held]
            with self.store.lazy_transaction() as tx:
                self.record(tx, self.clock())
                tx.outbox.release(self.owner, [m.seq for m in chunk], error)
            return None
        finally:
            sink.deadline = None

    def _outcomes(self, chunk: list[OutboxMessage], results: list[str | None]) -> set[tuple[str, str]]:
        """Note each message delivered or failed (dead after the last attempt); returns the
        (topic, key) of the failed ones."""
        report, policy = self.report, self.policy
        blocked: set[tuple[str, str]] = set()
        if results.count(None) == len(results):  # the usual case: all delivered
            self.delivered += [m.seq for m in chunk]
            report.delivered += len(chunk)
            return blocked
        now = self.clock()
        for m, r in zip(chunk, results, strict=True):
            if r is None:
                self.delivered.append(m.seq)
                report.delivered += 1
                continue
            r = self.sink.scrub(r)  # stored in last_error and reported: no secret of the URL
            attempts = m.attempts + 1
            dead = attempts >= policy.max_attempts
            retry_at = now + timedelta(seconds=policy.backoff.delay(attempts))
            self.failures.append(OutboxFailure(m.seq, r, attempts, retry_at, dead))
            blocked.add((m.topic, m.key))
            report.errors.append({"message_id": m.message_id, "attempts": attempts, "dead": dead, "error": r})
            if dead:
                report.dead += 1
            else:
                report.failed += 1
        return blocked


# -- inspecting and managing --------------------------------------------------------------


@dataclass
class OutboxStatus:
    counts: dict[str, int]
    due: int
    oldest_pending: datetime | None
    topics: list[dict[str, Any]]
    now: datetime

    @property
    def oldest_pending_age(self) -> float | None:
        return None if self.oldest_pending is None else (self.now - self.oldest_pending).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.counts,
            "due": self.due,
            "oldest_pending": None if self.oldest_pending is None else iso(self.oldest_pending),
            "oldest_pending_age_seconds": None
            if self.oldest_pending_age is None
            else round(self.oldest_pending_age, 3),
            "topics": self.topics,
        }


def status(store: Store, now: datetime | None = None) -> OutboxStatus:
    """Counts by status (overall and per topic), messages due now, the oldest pending message."""
    now = now or utcnow()
    with store.reader() as tx:
        rows = tx.outbox.summary(now)
    counts = dict.fromkeys(OUTBOX_STATUSES, 0)
    topics: dict[str, dict[str, Any]] = {}
    due = 0
    oldest: datetime | None = None
    for topic, st, n, n_due, first in rows:
        counts[st] = counts.get(st, 0) + n
        t = topics.setdefault(
            topic, {"topic": topic, **dict.fromkeys(OUTBOX_STATUSES, 0), "oldest_pending": None}
        )
        t[st] = n
        if st == "pending":
            due += n_due
            t["oldest_pending"] = iso(first) if first else None
            if first is not None and (oldest is None or first < oldest):
                oldest = first
    return OutboxStatus(counts, due, oldest, list(topics.values()), now)


def list_messages(
    store: Store, status: str | None = None, topic: str | None = None, limit: int | None = 50
) -> list[OutboxMessage]:
    if status is not None and status not in OUTBOX_STATUSES:
        raise UsageError(f"unknown status {status!r}: use {', '.join(OUTBOX_STATUSES)}")
    with store.reader() as tx:
        return tx.outbox.select(status, topic, limit)


def peek(
    store: Store,
    topic: str | None = None,
    key: str | None = None,
    limit: int | None = 10,
    format: str = "cqrsctl",
) -> list[dict[str, Any]]:
    """Pending messages in delivery order, as the stdout/file sinks would write them in message
    `format`; nothing is claimed or changed (`drain` would also wait for a message's next
    attempt time)."""
    from ..sinks.formats import Formatter
    from ..sinks.stream import wire_form

    # The stream sinks' rule: the cqrsctl form is the whole message, any other the encoded body.
    formatter = None if format == "cqrsctl" else Formatter(format, {}, "stdout", None)
    with store.reader() as tx:
        messages = tx.outbox.select("pending", topic, limit, key=key)
    if formatter is None:
        return [wire_form(m) for m in messages]
    return [orjson.loads(formatter.encode(m).body) for m in messages]


def show(store: Store, ident: str) -> OutboxMessage:
    """One message by message id (or seq number)."""
    with store.reader() as tx:
        message = tx.outbox.get(ident)
    if message is None:
        raise NotFoundError(f"no outbox message {ident!r}")
    return message


def retry(
    store: Store,
    ident: str | None = None,
    *,
    dead: bool = False,
    now: datetime | None = None,
    actor: str | None = None,
) -> int:
    """Make one message (pending or dead) or every dead message due now with fresh attempts; journaled."""
    if (ident is None) == (not dead):
        raise UsageError("give a message id or --dead (not both)")
    now = now or utcnow()
    with store.transaction() as tx:
        if ident is None:
            n = tx.outbox.requeue(now, dead=True)
            journal.record(tx, "outbox retry", {"dead": True}, {"requeued": n}, actor)
            return n
        message = tx.outbox.get(ident)
        if message is None:
            raise NotFoundError(f"no outbox message {ident!r}")
        if message.status == "delivered":
            raise UsageError(
                f"message {message.message_id} was delivered"
                + (f" at {iso(message.delivered_at)}" if message.delivered_at else "")
                + "; nothing to retry"
            )
        n = tx.outbox.requeue(now, seq=message.seq)
        journal.record(
            tx, "outbox retry", {"message": ident},
            {"requeued": n, "message_id": message.message_id, "error": message.last_error}, actor,
        )  # fmt: skip
        return n


def purge(
    store: Store,
    statuses: Sequence[str],
    older_than: timedelta,
    now: datetime | None = None,
    *,
    dry_run: bool = False,
    actor: str | None = None,
) -> int:
    """Delete delivered (and/or dead) messages older than `older_than`; pending ones are
    never purged. Journaled. With `dry_run`, counts what it would delete and changes nothing."""
    if not statuses:
        raise UsageError("say what to purge: --delivered and/or --dead")
    bad = set(statuses) - {"delivered", "dead"}
    if bad:
        raise UsageError(f"only delivered and dead messages can be purged, not {sorted(bad)[0]}")
    if older_than < timedelta(0):
        raise UsageError("the age must not be negative: only messages older than it are purged")
    before = (now or utcnow()) - older_than
    try:
        with store.transaction() as tx:
            n = tx.outbox.purge(list(statuses), before)
            if dry_run:
                raise _Preview(n)  # the exact count, by the same statement, rolled back
            journal.record(
                tx, "outbox purge", {"statuses": list(statuses), "older_than_seconds": older_than.total_seconds()},
                {"purged": n, "before": iso(before)}, actor,
            )  # fmt: skip
            return n
    except _Preview as preview:
        return preview.count


class _Preview(Exception):
    def __init__(self, count: int) -> None:
        self.count = count
