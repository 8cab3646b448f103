"""The transactional outbox: rows written with the events, and the relay that delivers them.

Writing: :func:`outbox_messages` turns a dispatch's appended events into outbox rows; the
dispatcher inserts them in the same transaction as the events, so a message exists if and
only if its event does.

Delivering: :func:`drain` leases batches of due messages (see
`Transaction.claim_outbox`), sends them to a :class:`~cqrsctl.sinks.Sink`, and records
the outcome. Delivery is at least once: a crash after a send and before the outcome is
recorded sends that batch again, with the same message id. Overlapping drains never hold
the same message, and order per (topic, key) is kept: a message waits while an earlier one
of its key is leased or backing off. A dead message no longer holds its key back.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from ..errors import DeliveryError, IncompleteError, NotFoundError, UsageError
from ..sinks import Sink, SinkUnavailable
from ..store import AppendResult, NewEvent, Store, StoredEvent, iso
from ..store.base import OUTBOX_STATUSES, NewMessage, OutboxFailure, OutboxMessage, Transaction, utcnow
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
        tx.add_outbox(messages)


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


def free_crashed_leases(tx: Transaction, now: datetime) -> int:
    """Release leases held by runs on this host whose process has died (a kill -9, a crash),
    so the next run need not wait for the lease to run out."""
    freed = 0
    for owner in tx.outbox_claimers(now):
        if dead_here(owner):
            freed += tx.release_outbox(owner)
    return freed


@dataclass
class DrainReport:
    """What one drain did. `exit_code`: 0 all due delivered, 12 some failed or died
    (or the sink was unavailable), 13 stopped at a bound (or a signal) with work left."""

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

    `max_messages` and `timeout` (seconds) bound the run; `stop()` is polled between sends
    (a signal handler sets it: the message in flight is finished, the rest released).
    `clock` gives "now" for due times, leases and back-off (tests pass a fake one).
    The sink is opened on the first message and closed at the end, unless `keep_open`
    (a long-running caller reusing one connection; it is closed anyway when it failed).
    Returns a :class:`DrainReport`; never raises for delivery failures (see its exit_code).
    """
    if batch < 1 or max_attempts < 1 or lease <= 0:
        raise UsageError("batch and max attempts must be at least 1, and the lease positive")
    owner = owner or owner_id("outbox")
    report = DrainReport(sink.name)
    started = time.monotonic()
    attempted = 0

    def out_of_bounds() -> str | None:
        if stop is not None and stop():
            return "signal"
        if max_messages is not None and attempted >= max_messages:
            return "max"
        if timeout is not None and time.monotonic() - started >= timeout:
            return "timeout"
        return None

    try:
        while True:
            report.stopped = out_of_bounds()
            if report.stopped:
                break
            size = batch if max_messages is None else min(batch, max_messages - attempted)
            now = clock()
            with store.transaction() as tx:
                claimed = tx.claim_outbox(owner, size, now, now + timedelta(seconds=lease), topics)
                # A short claim may be short because a crashed run still leases messages:
                # free those (a scan of the leases, so only then) and look once more.
                if len(claimed) < size and free_crashed_leases(tx, now):
                    until = now + timedelta(seconds=lease)
                    claimed += tx.claim_outbox(owner, size - len(claimed), now, until, topics)
            if not claimed:
                break
            report.batches += 1
            if not sink.is_open:
                try:
                    sink.open()
                    sink.is_open = True
                except SinkUnavailable as exc:
                    report.error = str(exc)
                    with store.transaction() as tx:
                        tx.release_outbox(owner, [m.seq for m in claimed], str(exc))
                    break
            attempted += len(claimed)
            _deliver_batch(
                store,
                sink,
                claimed,
                owner,
                report,
                max_attempts,
                backoff,
                lease,
                clock,
                out_of_bounds,
                on_progress,
            )
            if report.error or report.stopped:
                break
        if report.stopped:
            now = clock()
            with store.reader() as tx:
                report.remaining = sum(
                    due
                    for topic, status, _n, due, _oldest in tx.outbox_summary(now)
                    if status == "pending" and (not topics or topic in topics)
                )
    finally:
        # Whatever happened, leave no lease behind: the next run must not have to wait.
        try:
            with store.transaction() as tx:
                report.released += tx.release_outbox(owner)
        finally:
            if sink.is_open and (not keep_open or report.error):
                sink.close()
                sink.is_open = False
            report.elapsed = time.monotonic() - started
    return report


def _deliver_batch(
    store: Store,
    sink: Sink,
    claimed: list[OutboxMessage],
    owner: str,
    report: DrainReport,
    max_attempts: int,
    backoff: Backoff,
    lease: float,
    clock: Callable[[], datetime],
    out_of_bounds: Callable[[], str | None],
    on_progress: Callable[[int], None] | None,
) -> None:
    step = sink.batch_size or len(claimed)
    held = list(claimed)  # still leased to this run, in order
    until = claimed[0].claimed_until
    assert until is not None
    first = True
    while held:
        if not first:  # the first chunk was just claimed; later ones re-check the bounds
            report.stopped = out_of_bounds()
            if report.stopped:
                with store.transaction() as tx:
                    report.released += tx.release_outbox(owner, [m.seq for m in held])
                return
        first = False
        now = clock()
        if (until - now).total_seconds() < lease / 3:
            # Renew before sending: a message must never go out on a lease that may have run out.
            until = now + timedelta(seconds=lease)
            with store.transaction() as tx:
                kept = tx.renew_outbox(owner, [m.seq for m in held], until)
            if kept < len(held):
                report.error = "lost the lease on claimed messages (the run was paused longer than --lease)"
                return
        chunk, held = held[:step], held[step:]
        try:
            results = sink.send(chunk)
        except SinkUnavailable as exc:
            report.error = str(exc)
            with store.transaction() as tx:
                tx.release_outbox(owner, [m.seq for m in chunk], str(exc))
            return
        # A sink that stops at a refusal answers for a prefix: the rest was not sent.
        unsent = [m.seq for m in chunk[len(results) :]]
        chunk = chunk[: len(results)]
        delivered = [m.seq for m, r in zip(chunk, results, strict=True) if r is None]
        failures = []
        blocked: set[tuple[str, str]] = set()
        now = clock()
        for m, r in zip(chunk, results, strict=True):
            if r is None:
                continue
            attempts = m.attempts + 1
            dead = attempts >= max_attempts
            retry_at = now + timedelta(seconds=backoff.delay(attempts))
            failures.append(OutboxFailure(m.seq, r, attempts, retry_at, dead))
            blocked.add((m.topic, m.key))
            report.errors.append({"message_id": m.message_id, "attempts": attempts, "dead": dead, "error": r})
            if dead:
                report.dead += 1
            else:
                report.failed += 1
        # Later messages of a key that just failed must wait for it: hand them back.
        later = unsent + [m.seq for m in held if (m.topic, m.key) in blocked]
        if blocked:
            held = [m for m in held if (m.topic, m.key) not in blocked]
        with store.transaction() as tx:
            if delivered:
                tx.mark_delivered(delivered, now)
            if failures:
                tx.mark_failed(owner, failures)
            if later:
                report.released += tx.release_outbox(owner, later)
        report.delivered += len(delivered)
        if on_progress:
            on_progress(len(chunk))


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
        rows = tx.outbox_summary(now)
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
        return tx.list_outbox(status, topic, limit)


def show(store: Store, ident: str) -> OutboxMessage:
    """One message by message id (or seq number)."""
    with store.reader() as tx:
        message = tx.get_outbox(ident)
    if message is None:
        raise NotFoundError(f"no outbox message {ident!r}")
    return message


def retry(store: Store, ident: str | None = None, *, dead: bool = False, now: datetime | None = None) -> int:
    """Make one message (pending or dead) or every dead message due now with fresh attempts."""
    if (ident is None) == (not dead):
        raise UsageError("give a message id or --dead (not both)")
    now = now or utcnow()
    with store.transaction() as tx:
        if ident is None:
            return tx.requeue_outbox(now, dead=True)
        message = tx.get_outbox(ident)
        if message is None:
            raise NotFoundError(f"no outbox message {ident!r}")
        if message.status == "delivered":
            raise UsageError(
                f"message {message.message_id} was delivered"
                + (f" at {iso(message.delivered_at)}" if message.delivered_at else "")
                + "; nothing to retry"
            )
        return tx.requeue_outbox(now, seq=message.seq)


def purge(store: Store, statuses: Sequence[str], older_than: timedelta, now: datetime | None = None) -> int:
    """Delete delivered (and/or dead) messages older than `older_than`; pending ones are never purged."""
    if not statuses:
        raise UsageError("say what to purge: --delivered and/or --dead")
    bad = set(statuses) - {"delivered", "dead"}
    if bad:
        raise UsageError(f"only delivered and dead messages can be purged, not {sorted(bad)[0]}")
    with store.transaction() as tx:
        return tx.purge_outbox(list(statuses), (now or utcnow()) - older_than)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """`90s`, `15m`, `12h`, `7d`, `2w` (or plain seconds) as a timedelta."""
    t = text.strip().lower()
    try:
        if t and t[-1] in _UNITS:
            return timedelta(seconds=float(t[:-1]) * _UNITS[t[-1]])
        return timedelta(seconds=float(t))
    except ValueError:
        raise UsageError(f"invalid duration {text!r}: use e.g. 90s, 15m, 12h, 7d") from None
