"""Running projections: incremental steps, catch-up, rebuild, reset, skip, retry, status.

Every step reads a page of events, runs the handlers against a write-back cache, then
in ONE transaction writes the read-model rows and moves the checkpoint; a crash leaves
both as they were before the step or both after it.

Who may move a checkpoint is decided by its lease (owner, lease_until): a step first
locks the checkpoint row (``FOR UPDATE`` on PostgreSQL; SQLite writers are serialised by
``BEGIN IMMEDIATE``) and goes on only if the lease is its own and unexpired. Taking a
lease needs that same row lock, so while one process is inside a step no other can take
the lease, and no two processes ever run one projection's handlers at the same time.

Reading never skips an event committed late: both backends make global positions
visible in commit order (see the stores), so "everything after my position" is exact.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from ..app import App
from ..errors import BatchError, IncompleteError, LockedError, NotFoundError, UsageError
from ..projection import EventPage, EventView, Projection, ReadModel
from ..store import Store, Transaction, iso
from ..store.tracking import Checkpoint, EventTuple, ReadModels, Tracking
from . import journal
from .owners import dead_here, owner_id

log = logging.getLogger(__name__)

STEP_BATCH = 500  # events per incremental transaction (daemon, catch-up)
REBUILD_BATCH = 100_000  # events per rebuild transaction
# Changed rows a rebuild transaction may leave to write: it writes them holding the write
# lock (SQLite's, of the whole database), so they bound what a dispatch may wait for.
REBUILD_DIRTY = 20_000
REBUILD_WINDOW = 0.5  # seconds of handler work per rebuild transaction, whatever the batch
SLICE = 50  # events between looks at the clock in a rebuild
SWAP_TAIL = 0.1  # a rebuild swaps once a batch that reached the head took less than this
PAGE = 5000  # events read at once: a rebuild's transaction reads several pages
LEASE_SECONDS = 5.0  # a daemon's hold on a projection; renewed about every second
REBUILD_LEASE_SECONDS = 30.0
CACHE_ROWS = 100_000  # read-model rows a rebuild keeps in memory between batches
REBUILD_PREFIX = "rebuild:"
SHADOW_SUFFIX = "__rebuild"


def lease_free(cp: Checkpoint, owner: str) -> bool:
    return cp.owner is None or cp.owner == owner or not cp.lease_valid or dead_here(cp.owner)


def projection_class(app: App, name: str) -> type[Projection]:
    try:
        return app.projections[name]
    except KeyError:
        known = ", ".join(sorted(app.projections)) or "none"
        raise NotFoundError(f"unknown projection {name!r} (known: {known})") from None


def select(app: App, names: Sequence[str] | None) -> list[type[Projection]]:
    if not app.projections:
        raise NotFoundError(f"app {app.name!r} registers no projections")
    if not names:
        return [app.projections[n] for n in sorted(app.projections)]
    return [projection_class(app, n) for n in names]


def _live(cls: type[Projection]) -> dict[str, str]:
    return {t: t for t in cls.tables}


def _shadow(cls: type[Projection]) -> dict[str, str]:
    return {t: t + SHADOW_SUFFIX for t in cls.tables}


class HandlerFailure(Exception):
    """A handler raised on the event at `position`."""

    def __init__(self, position: int, event_type: str, exc: BaseException) -> None:
        self.position, self.event_type = position, event_type
        self.message = f"{type(exc).__name__}: {exc}"
        super().__init__(f"handler for {event_type} failed at position {position}: {self.message}")


def apply(
    app: App,
    handlers: dict[str, Callable[[EventView, ReadModel], None]],
    rm: ReadModel,
    rows: Sequence[EventTuple],
    skipped: set[int],
    page: EventPage | None = None,
) -> None:
    """Run the handlers over `rows` in order (the hot loop of catch-up and rebuild)."""
    get = handlers.get
    for row in rows:
        handler = get(row[2])
        if handler is None or (skipped and row[0] in skipped):
            continue
        try:
            handler(EventView(row, app, page), rm)
        except Exception as exc:
            raise HandlerFailure(row[0], row[2], exc) from exc


def _until(position: int, head: int, limit: int) -> int:
    """The last position a page of `limit` events after `position` reads: the head, or less
    when that is far away. A page is then a short range of the primary key, which no plan
    (PostgreSQL's without statistics, say) makes costly."""
    return min(head, position + limit)


def _advance(cp_position: int, until: int, rows: Sequence[EventTuple], limit: int) -> int:
    """The new checkpoint after reading `rows` (a page of at most `limit` matching events
    up to `until`, a position at most the head).

    A short page means no matching event lies between the last row and `until` (the head
    is read before the page, and positions commit in order), so the checkpoint may move
    there: lag then counts only what is really left."""
    if len(rows) >= limit:
        return rows[-1][0]  # type: ignore[no-any-return]
    return max(cp_position, until, rows[-1][0] if rows else 0)


class _Columns:
    """The columns pages of events are read with, for one run of a projection: bare ones
    (no versions) until a handler asks for a version, then lean ones; whole ones once a
    handler asks for metadata, recorded_at or event_id. Upcasters need the schema version,
    so an app with any starts lean."""

    def __init__(self, app: App) -> None:
        self.lean, self.bare = True, not app.upcasters

    def scan(
        self, tr: Tracking, after: int, limit: int, types: Sequence[str] | None, until: int
    ) -> list[EventTuple]:
        return tr.scan(after, limit, types, until, lean=self.lean, bare=self.bare)

    def page(self, tr: Tracking, rows: Sequence[EventTuple], types: Sequence[str]) -> EventPage | None:
        """What fetches the rest of a row for `rows` read lean or bare (None when whole)."""
        return EventPage(tr, rows, types) if self.lean and rows else None

    def learn(self, page: EventPage) -> None:
        """After the handlers ran over `page`: read what they asked for from the next page on."""
        if page.full is not None:
            self.lean, self.bare = not page.everything, False


# -- one projection, step by step ------------------------------------------------------------


class _Busy(Exception):
    """The checkpoint row stayed locked past the fence's short wait: try again later."""


class _Late(Exception):
    """The lease changed hands (or ran out) while the step ran: its result is not committed."""

    def __init__(self, cp: Checkpoint | None) -> None:
        self.cp = cp


@dataclass
class Step:
    """What one call of Runner.step did."""

    outcome: str  # progressed | caught-up | backoff | failed | stale | lost
    processed: int = 0
    position: int = 0
    error: str | None = None


class Runner:
    """Moves one projection forward in bounded, fenced steps, on behalf of `owner`.

    A handler that raises is retried `retries` times with back-off (`backoff` seconds,
    times 5 each attempt), the events before it being committed first; then the
    projection is marked failed, naming the event, and waits for `skip` or `retry`.
    """

    def __init__(
        self,
        store: Store,
        app: App,
        cls: type[Projection],
        owner: str,
        *,
        batch: int = STEP_BATCH,
        lease: float = LEASE_SECONDS,
        retries: int = 3,
        backoff: float = 0.2,
    ) -> None:
        self.store, self.app, self.cls, self.owner = store, app, cls, owner
        self.name = cls.name
        self.version = str(cls.version)
        self.projection = cls()
        self.handlers = self.projection.handlers()
        self.batch, self.lease, self.retries, self.backoff = batch, lease, retries, backoff
        self.attempts = 0
        self.retry_at = 0.0
        self._rm: ReadModel | None = None
        self._token: Any = None
        self._columns = _Columns(app)

    def claim(self) -> str:
        """Take the lease: 'claimed', 'held' (someone else has it) or 'stale' (version differs).
        A new projection gets its tables and checkpoint here. Never waits on another
        process: a lease that looks held is left alone without locking anything, and a row
        locked by someone's commit counts as held."""
        with self.store.reader() as tx:
            seen = tx.tracking.get(self.name)
        if seen is not None and seen.version == self.version and not lease_free(seen, self.owner):
            return "held"
        try:
            with self.store.transaction() as tx:
                tr = tx.tracking
                cp = tr.fence(self.name)
                if cp is None:
                    for table, spec in self.cls.tables.items():
                        tx.read_models.create_table(table, spec)
                        tx.read_models.create_indexes(table, spec)
                    cp = Checkpoint(self.name, version=self.version)
                elif cp.version != self.version:
                    return "stale"
                elif not lease_free(cp, self.owner):
                    return "held"
                cp.owner = self.owner
                self._token = tr.put(cp, lease=self.lease)
        except LockedError:
            return "held"
        self.attempts, self.retry_at = 0, 0.0
        self._rm = None
        return "claimed"

    def release(self) -> None:
        with self.store.transaction() as tx:
            tx.tracking.release([self.name], self.owner)

    def step(self) -> Step:
        if self.retry_at > time.monotonic():
            return Step("backoff")
        try:
            step = self._step(None)
        except HandlerFailure as failure:
            self._step(failure.position)  # commit what came before the poison event
            self.attempts += 1
            if self.attempts > self.retries:
                self._mark_failed(failure)
                log.warning(f"{self.name}: failed at position {failure.position}: {failure.message}")
                self.attempts, self.retry_at = 0, 0.0
                return Step("failed", position=failure.position - 1, error=failure.message)
            delay = self.backoff * 5 ** (self.attempts - 1)
            self.retry_at = time.monotonic() + delay
            log.warning(
                f"{self.name}: handler failed at position {failure.position} "
                f"(attempt {self.attempts} of {self.retries + 1}, retrying in {delay:.1f}s): {failure.message}"
            )
            return Step("backoff", position=failure.position - 1, error=failure.message)
        if step.outcome in ("progressed", "caught-up"):
            self.attempts = 0
        return step

    def _fenced(self, cp: Checkpoint | None) -> Step | None:
        if cp is None or cp.owner != self.owner or not cp.lease_valid:
            return Step("lost")
        if cp.version != self.version:
            return Step("stale", position=cp.position)
        if cp.status == "failed":
            return Step("failed", position=cp.position, error=cp.error)
        return None

    def _step(self, before: int | None) -> Step:
        # The handlers run in a deferred transaction: no write lock (SQLite's is the whole
        # database's) and no checkpoint row lock (a holder stopped inside a handler must not
        # keep others from taking its lease over). Only the commit is fenced: the row locked,
        # then owner, lease and token (updated_at: every claim, takeover, reset, skip or swap
        # changes it) must be what the step started from, or the result is thrown away.
        rows: Sequence[EventTuple] = []
        try:
            with self.store.transaction(deferred=True) as tx:
                tr = tx.tracking
                cp, head = tr.get(self.name), tr.head()
                early = self._fenced(cp)
                if early is not None:
                    self._rm = None
                    return early
                assert cp is not None
                until = _until(cp.position, head, self.batch)
                rows = self._columns.scan(tr, cp.position, self.batch, self.cls.handles, until)
                if before is not None:
                    rows = [r for r in rows if r[0] < before]
                rm = self._handle(tx, cp, rows)
                new = before - 1 if before is not None else _advance(cp.position, until, rows, self.batch)
                token = self._commit(tr, rm, cp.updated_at, new)
        except _Busy:
            self._rm = None
            return Step("busy")
        except _Late as late:
            self._rm = None
            who = late.cp.owner if late.cp is not None and late.cp.lease_valid else None
            log.info(
                f"{self.name}: lease lost during a step ({'now held by ' + who if who else 'expired'}): "
                f"its result ({len(rows)} events) was discarded"
            )
            return Step("lost")
        except BaseException:
            self._rm = None  # what the cache holds may not have been committed
            raise
        self._token = token
        rm.trim(CACHE_ROWS)
        return Step("progressed" if new < head else "caught-up", len(rows), new)

    def _handle(self, tx: Transaction, cp: Checkpoint, rows: Sequence[EventTuple]) -> ReadModel:
        """Run the handlers over `rows` into the read-model cache; returns the cache."""
        page = self._columns.page(tx.tracking, rows, self.cls.handles)
        skipped = {s["position"] for s in cp.skipped}
        # The cache of read-model rows outlives a step only while nobody else wrote the
        # checkpoint (a rebuild's swap, a reset, skip/retry): its updated_at is the token.
        # Only the lease holder writes the tables themselves.
        rm = self._rm
        if rm is None or cp.updated_at != self._token:
            rm = self._rm = ReadModel(tx.read_models, self.cls.tables, _live(self.cls))
            # An empty table (a new projection's) holds nothing the cache lacks: a miss
            # then needs no lookup, until the cache is trimmed.
            for table, spec in self.cls.tables.items():
                if not tx.read_models.select(table, spec, limit=1):
                    rm.mark_complete(table)
        rm.bind(tx.read_models)
        try:
            apply(self.app, self.handlers, rm, rows, skipped, page)
        finally:
            if page is not None:
                self._columns.learn(page)
                page.close()
        return rm

    def _commit(self, tr: Tracking, rm: ReadModel, started: Any, position: int) -> Any:
        """Fence, then write the read-model rows and move the checkpoint to `position`;
        returns the new token. Raises _Busy or _Late when the step may not commit."""
        try:
            now = tr.fence(self.name)
        except LockedError:
            raise _Busy() from None
        if self._fenced(now) is not None or now is None or now.updated_at != started:
            raise _Late(now)
        rm.flush()
        now.position, now.status = position, "idle"
        return tr.put(now, lease=self.lease)

    def _mark_failed(self, failure: HandlerFailure) -> None:
        self._rm = None
        with self.store.transaction() as tx:
            tr = tx.tracking
            cp = tr.get(self.name, lock=True)
            if self._fenced(cp) is not None:
                return
            assert cp is not None
            cp.status = "failed"
            cp.error = f"{failure.event_type} at position {failure.position}: {failure.message}"
            cp.error_position = failure.position
            tr.put(cp)


# -- catch-up (cron) -----------------------------------------------------------------------------


@dataclass
class CatchUpResult:
    name: str
    outcome: str  # caught-up | failed | stale | held | timeout
    processed: int = 0
    position: int = 0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "outcome": self.outcome,
            "processed": self.processed,
            "position": self.position,
            "error": self.error,
        }


def catch_up(
    store: Store,
    app: App,
    names: Sequence[str] | None = None,
    *,
    timeout: float | None = None,
    batch: int = STEP_BATCH,
    retries: int = 3,
    backoff: float = 0.2,
    on_progress: Callable[[int], None] | None = None,
) -> list[CatchUpResult]:
    """Process what is new for each projection and return; projections a daemon holds
    are left to it ('held'). Raises nothing for failures: look at the outcomes (or use
    :func:`check_catch_up`)."""
    owner = owner_id("catch-up")
    deadline = None if timeout is None else time.monotonic() + timeout
    results: dict[str, CatchUpResult] = {}
    runners: list[Runner] = []
    for cls in select(app, names):
        runner = Runner(store, app, cls, owner, batch=batch, retries=retries, backoff=backoff)
        claimed = runner.claim()
        results[cls.name] = CatchUpResult(cls.name, "caught-up" if claimed == "claimed" else claimed)
        if claimed == "claimed":
            runners.append(runner)
    renewed = time.monotonic()
    try:
        active = list(runners)
        while active:
            if deadline is not None and time.monotonic() > deadline:
                for runner in active:
                    results[runner.name].outcome = "timeout"
                break
            waiting = True
            for runner in list(active):
                step = runner.step()
                result = results[runner.name]
                result.processed += step.processed
                if on_progress and step.processed:
                    on_progress(step.processed)
                if step.outcome != "backoff":
                    waiting = False
                    result.position = step.position
                if step.outcome in ("caught-up", "failed", "stale", "lost"):
                    result.outcome = {"lost": "held"}.get(step.outcome, step.outcome)
                    result.error = step.error
                    active.remove(runner)
            if waiting and active:
                if time.monotonic() - renewed > 1.0:  # backing off must not cost the leases
                    with store.transaction() as tx:
                        tx.tracking.renew([r.name for r in active], owner, LEASE_SECONDS)
                    renewed = time.monotonic()
                time.sleep(min(0.05, max(0.0, min(r.retry_at for r in active) - time.monotonic())))
    finally:
        for runner in runners:
            try:
                runner.release()
            except Exception:  # the lease runs out by itself
                pass
    return [results[n] for n in results]


def check_catch_up(results: Sequence[CatchUpResult]) -> None:
    """Raise when a catch-up left work undone: failed or stale projections (BatchError),
    or the timeout hit first (IncompleteError)."""
    bad = [r for r in results if r.outcome in ("failed", "stale")]
    if bad:
        raise BatchError(
            "; ".join(f"{r.name} {r.outcome}" + (f": {r.error}" if r.error else "") for r in bad)
        )
    late = [r.name for r in results if r.outcome == "timeout"]
    if late:
        raise IncompleteError(f"timed out with work left: {', '.join(late)}")


# -- rebuild ------------------------------------------------------------------------------------------


@dataclass
class RebuildResult:
    name: str
    version: int
    events: int  # events handed to handlers
    position: int
    seconds: float
    resumed_from: int = 0

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "events": self.events,
            "position": self.position,
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.rate),
            "resumed_from": self.resumed_from,
        }


def version_number(stored: str | None) -> int | str | None:
    """Checkpoints keep the version as text; JSON shows a number when it is one."""
    return int(stored) if stored is not None and stored.isdigit() else stored


def skip_view(entry: dict[str, Any]) -> dict[str, Any]:
    """A skipped position; entries written before the key was `reason` kept it under `error`."""
    view = dict(entry)
    view.setdefault("reason", entry.get("error"))
    return view


@dataclass
class RebuildPlan:
    """What `rebuild --dry-run` reports."""

    name: str
    version: int
    live_version: str | None
    live_position: int | None
    head: int
    resume_from: int
    tables: list[str]
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "live_version": version_number(self.live_version),
            "live_position": self.live_position,
            "head": self.head,
            "resume_from": self.resume_from,
            "tables": self.tables,
            "note": self.note,
        }


def plan_rebuild(store: Store, app: App, name: str) -> RebuildPlan:
    cls = projection_class(app, name)
    with store.reader() as tx:
        tr = tx.tracking
        live, rb, head = tr.get(name), tr.get(REBUILD_PREFIX + name), tr.head()
    resume = rb.position if rb is not None and rb.version == str(cls.version) else 0
    notes = []
    if rb is not None and rb.lease_valid and not dead_here(rb.owner):
        notes.append(f"a rebuild is running ({rb.owner}): this one would wait for it to stop")
    elif resume:
        notes.append(f"resumes an interrupted rebuild at position {resume}")
    shadows = ", ".join(t + SHADOW_SUFFIX for t in cls.tables)
    notes.append(
        f"builds {shadows} from position {resume} to the head ({head}), then swaps them for "
        f"{', '.join(cls.tables)} in one transaction; events are only read"
    )
    return RebuildPlan(
        name, cls.version, None if live is None else live.version, None if live is None else live.position,
        head, resume, list(cls.tables), "; ".join(notes),
    )  # fmt: skip


def rebuild(
    store: Store,
    app: App,
    name: str,
    *,
    batch: int = REBUILD_BATCH,
    on_progress: Callable[[int], None] | None = None,
    actor: str | None = None,
) -> RebuildResult:
    """Replay every event into shadow tables, then swap them in atomically.

    Readers keep seeing the old tables until the swap commits. The shadow build and its
    position (checkpoint ``rebuild:<name>``) commit together per batch, so a rebuild
    that is interrupted (Ctrl-C, kill -9) is resumed by running it again; the live
    tables and the events are never touched before the swap. `on_progress(n)` is called
    after every batch with the positions it moved (the rebuild's total is the head less
    `plan_rebuild`'s `resume_from`, at least).
    """
    return Rebuild(store, app, name, batch=batch, on_progress=on_progress, actor=actor).run()


class Rebuild:
    """One rebuild of one projection, in named steps: `prepare` (take the build's lease;
    make the shadow tables, or keep them to resume), `step` (a batch of events into the
    shadow tables, committed with the build's position), `swap` (the last events, then the
    tables exchanged under the live checkpoint's lock) and `abandon` (give the build back,
    its progress kept). `run` does them in order."""

    def __init__(
        self,
        store: Store,
        app: App,
        name: str,
        *,
        batch: int = REBUILD_BATCH,
        on_progress: Callable[[int], None] | None = None,
        actor: str | None = None,
    ) -> None:
        self.store, self.app, self.name, self.actor = store, app, name, actor
        self.cls = projection_class(app, name)
        self.version = str(self.cls.version)
        self.owner = owner_id("rebuild")
        self.rb_name = REBUILD_PREFIX + name
        self.shadow = _shadow(self.cls)
        self.handlers = self.cls().handlers()
        self.batch, self.page_size = batch, min(batch, PAGE)
        self.on_progress = on_progress
        self.columns = _Columns(app)
        self.started = time.monotonic()
        self.position = self.resumed_from = self.events = self.total = self.reported = 0
        self.skipped: set[int] = set()
        self.rm: ReadModel | None = None

    def run(self) -> RebuildResult:
        self.prepare()
        # Each batch runs its handlers in a deferred transaction and holds the write lock
        # only to write what they made (SQLite has one for the whole database: dispatches
        # wait for that much, not for the handlers).
        caught_up = 0
        try:
            while True:
                began = time.monotonic()
                # Swap once the head was reached quickly: little can have come meanwhile,
                # and that little is all the swap does under the locks. (While writers
                # outpace the handlers it never is; after 20 tries the swap takes what is left.)
                if self.step():
                    caught_up += 1
                    if time.monotonic() - began < SWAP_TAIL or caught_up >= 20:
                        break
            self.swap()
        except BaseException:
            self.abandon()
            raise
        done = self.position - self.resumed_from
        self._progress(max(self.total, done))
        return RebuildResult(
            self.name, self.cls.version, self.events, self.position, time.monotonic() - self.started,
            self.resumed_from,
        )  # fmt: skip

    def prepare(self) -> None:
        """Take the build's lease, and start afresh unless a build of this version can resume."""
        cls, shadow = self.cls, self.shadow
        with self.store.transaction() as tx:
            tr = tx.tracking
            rb = tr.get(self.rb_name, lock=True)
            if rb is not None and not lease_free(rb, self.owner):
                raise LockedError(f"a rebuild of {self.name} is already running ({rb.owner})")
            fresh = (
                rb is None
                or rb.version != self.version
                or not all(tx.read_models.table_exists(t) for t in shadow.values())
            )
            if fresh:
                for table, spec in cls.tables.items():
                    tx.read_models.drop_table(shadow[table])
                    tx.read_models.create_table(shadow[table], spec)
                rb = Checkpoint(self.rb_name, version=self.version, status="rebuilding")
            assert rb is not None
            rb.owner, rb.lease_until = self.owner, tr.now() + timedelta(seconds=REBUILD_LEASE_SECONDS)
            tr.put(rb)
            live = tr.get(self.name)
            head = tr.head()
        self.skipped = {s["position"] for s in live.skipped} if live is not None else set()
        self.resumed_from = self.position = rb.position
        self.rm = ReadModel(tx.read_models, cls.tables, shadow)
        if self.position == 0:
            for table in cls.tables:
                self.rm.mark_complete(table)
        self.total = max(head - self.resumed_from, 0)
        log.info(f"{self.name}: rebuilding v{self.version} from position {self.position} (head {head})")

    def step(self) -> bool:
        """One batch into the shadow tables, committed with the build's position and lease;
        True when it reached the head."""
        assert self.rm is not None
        with self.store.transaction(deferred=True) as tx:
            tr = tx.tracking
            done = self._handle(tx)
            cp = self._fenced(tr)
            self.rm.flush()
            cp.position = self.position
            cp.lease_until = tr.now() + timedelta(seconds=REBUILD_LEASE_SECONDS)
            tr.put(cp)
        self.rm.trim(CACHE_ROWS)
        self._progress(self.position - self.resumed_from)
        return done

    def swap(self) -> None:
        """Catch up the last events and exchange the tables under the live checkpoint's row
        lock, so no step of a daemon interleaves."""
        assert self.rm is not None
        cls, name = self.cls, self.name
        with self.store.transaction(deferred=True) as tx:
            tr = tx.tracking
            self._fenced(tr, swap=True)
            live = tr.get(name, lock=True)
            while not self._handle(tx):
                pass
            self.rm.flush()
            for table, spec in cls.tables.items():
                tx.read_models.drop_table(table)
                tx.read_models.rename_table(self.shadow[table], table)
                tx.read_models.create_indexes(table, spec)
            if live is None:
                live = Checkpoint(name)
            cleared = live.error
            live.position, live.version, live.status = self.position, self.version, "idle"
            live.error = live.error_position = None
            tr.put(live)
            tr.delete(self.rb_name)
            result = {"position": self.position, "events": self.events, "resumed_from": self.resumed_from}
            journal.record(
                tx, "projections rebuild", {"name": name, "version": cls.version}, {**result, "error": cleared},
                self.actor,
            )  # fmt: skip

    def abandon(self) -> None:
        """Give the build back at once (its progress is kept) so a rerun need not wait."""
        try:
            with self.store.transaction() as tx:
                tx.tracking.release([self.rb_name], self.owner)
        except Exception:
            pass

    def _progress(self, done: int) -> None:
        if self.on_progress:
            self.on_progress(done - self.reported)
            self.reported = done

    def _fenced(self, tr: Tracking, swap: bool = False) -> Checkpoint:
        # The swap runs handlers after taking its locks: no idle bound there, and it may
        # wait for a daemon's commit to end.
        cp = tr.fence(self.rb_name, wait=None, idle=None) if swap else tr.fence(self.rb_name)
        if cp is None or cp.owner != self.owner:
            raise LockedError(f"the rebuild of {self.name} was taken over by {cp.owner if cp else 'a reset'}")
        return cp

    def _handle(self, tx: Transaction) -> bool:
        """Pages into the shadow tables' cache until `batch` events (or as many positions,
        REBUILD_DIRTY changed rows or REBUILD_WINDOW seconds) are done or the head read
        first is reached; True in that last case. The caller flushes."""
        assert self.rm is not None
        tr = tx.tracking
        head_now = tr.head()
        start, done = self.position, 0
        until_time = time.monotonic() + REBUILD_WINDOW
        self.rm.bind(tx.read_models)
        pages: list[EventPage] = []
        try:
            while (
                self.position < head_now
                and done < self.batch
                and self.position - start < self.batch
                and self.rm.pending() < REBUILD_DIRTY
                and time.monotonic() < until_time
            ):
                done += self._page(tr, head_now, until_time, pages)
        finally:
            for page in pages:
                page.close()
        self.events += done
        return self.position >= head_now

    def _page(self, tr: Tracking, head_now: int, until_time: float, pages: list[EventPage]) -> int:
        """One page of events through the handlers, in slices so that a slow handler ends
        the batch on time, whatever the page; returns the events done."""
        assert self.rm is not None
        cls = self.cls
        until = _until(self.position, head_now, self.page_size)
        rows = self.columns.scan(tr, self.position, self.page_size, cls.handles, until)
        page = self.columns.page(tr, rows, cls.handles)
        if page is not None:
            pages.append(page)
        cut = len(rows)
        try:
            for at in range(0, len(rows), SLICE):
                part = rows if len(rows) <= SLICE else rows[at : at + SLICE]
                apply(self.app, self.handlers, self.rm, part, self.skipped, page)
                if at + SLICE < len(rows) and time.monotonic() >= until_time:
                    cut = at + SLICE
                    break
        except HandlerFailure as failure:
            raise BatchError(
                f"rebuild of {self.name} stopped: {failure}; the live tables are untouched. Fix the handler "
                f"(or `cqrsctl projections skip {self.name} --position {failure.position}`) and run it again"
            ) from None
        self.position = (
            _advance(self.position, until, rows, self.page_size) if cut == len(rows) else rows[cut - 1][0]
        )
        if page is not None:
            self.columns.learn(page)
        return cut


# -- reset, skip, retry -----------------------------------------------------------------------------


def _count(tables: ReadModels, table: str) -> int:
    if not tables.table_exists(table):
        return 0
    return int(tables.execute(f'SELECT count(*) AS n FROM "{table}"')[0]["n"])


def reset(
    store: Store, app: App, name: str, *, dry_run: bool = False, actor: str | None = None
) -> dict[str, Any]:
    """Drop the projection's tables (live and shadow) and forget its checkpoint; the next
    catch-up or daemon run builds it again from the first event. Journaled. With
    `dry_run`, only says what it would drop. Returns {tables: {table: rows}, position}."""
    cls = projection_class(app, name)
    with store.reader() if dry_run else store.transaction() as tx:
        tr = tx.tracking
        rb = tr.get(REBUILD_PREFIX + name, lock=not dry_run)
        if rb is not None and rb.owner and rb.lease_valid and not dead_here(rb.owner):
            raise LockedError(f"a rebuild of {name} is running ({rb.owner}); stop it first")
        cp = tr.get(name, lock=not dry_run)
        tables = [
            t
            for table in cls.tables
            for t in (table, table + SHADOW_SUFFIX)
            if tx.read_models.table_exists(t)
        ]
        result: dict[str, Any] = {
            "name": name,
            "tables": {t: _count(tx.read_models, t) for t in tables},
            "position": None if cp is None else cp.position,
            "dry_run": dry_run,
        }
        if dry_run:
            return result
        for table in tables:
            tx.read_models.drop_table(table)
        tr.delete(name)
        tr.delete(REBUILD_PREFIX + name)
        journal.record(tx, "projections reset", {"name": name}, result, actor)
        return result


def _event_at(tr: Tracking, position: int) -> EventTuple | None:
    rows = tr.scan(position - 1, 1, until=position, lean=True)
    return rows[0] if rows and rows[0][0] == position else None


def skip(
    store: Store,
    app: App,
    name: str,
    position: int | None = None,
    reason: str | None = None,
    *,
    actor: str | None = None,
) -> Checkpoint:
    """Never apply one event to this projection: the failed one (`position` None), or the
    event at `position`, which must exist and not be processed yet. The skip keeps the
    reason beside the error it cleared, and is journaled; :func:`unskip` undoes it."""
    projection_class(app, name)
    with store.transaction() as tx:
        tr = tx.tracking
        cp = tr.get(name, lock=True)
        if cp is None:
            raise NotFoundError(f"projection {name} has not run yet: nothing to skip")
        if position is None:
            if cp.status != "failed" or cp.error_position is None:
                raise UsageError(f"projection {name} is not failed: name the event with --position")
            position = cp.error_position
        if position <= cp.position:
            raise UsageError(f"position {position} is already processed by {name} (at {cp.position})")
        head = tr.head()
        if position > head or _event_at(tr, position) is None:
            raise NotFoundError(f"no event at position {position} (the head is {head}): nothing to skip")
        if any(s["position"] == position for s in cp.skipped):
            return cp
        failed_here = cp.status == "failed" and cp.error_position == position
        error = cp.error if failed_here else None
        cp.skipped.append({"position": position, "at": iso(tr.now()), "error": error, "reason": reason})
        if failed_here:
            cp.status, cp.error, cp.error_position = "idle", None, None
        tr.put(cp)
        journal.record(
            tx, "projections skip", {"name": name, "position": position, "reason": reason},
            {"error": error, "status": cp.status}, actor,
        )  # fmt: skip
        return cp


def unskip(store: Store, app: App, name: str, position: int, *, actor: str | None = None) -> dict[str, Any]:
    """Undo a skip. The event is applied at the next catch-up when the projection has not
    passed it yet, else at its next rebuild (applying it late, out of order, could
    corrupt the read model). Journaled; returns {position, applies: catch-up|rebuild}."""
    projection_class(app, name)
    with store.transaction() as tx:
        tr = tx.tracking
        cp = tr.get(name, lock=True)
        if cp is None or not any(s["position"] == position for s in cp.skipped):
            raise NotFoundError(f"projection {name} does not skip position {position}")
        undone = next(s for s in cp.skipped if s["position"] == position)
        cp.skipped = [s for s in cp.skipped if s["position"] != position]
        tr.put(cp)
        applies = "catch-up" if position > cp.position else "rebuild"
        result = {"name": name, "position": position, "applies": applies, "skip": undone}
        journal.record(tx, "projections unskip", {"name": name, "position": position}, result, actor)
        return result


def retry(store: Store, app: App, name: str, *, actor: str | None = None) -> Checkpoint:
    """Put a failed projection back to work (after fixing the handler or the data); journaled
    with the error it cleared."""
    projection_class(app, name)
    with store.transaction() as tx:
        tr = tx.tracking
        cp = tr.get(name, lock=True)
        if cp is None:
            raise NotFoundError(f"projection {name} has not run yet")
        if cp.status != "failed":
            raise UsageError(f"projection {name} is not failed (status {cp.status})")
        cleared = {"error": cp.error, "error_position": cp.error_position, "position": cp.position}
        cp.status, cp.error, cp.error_position = "idle", None, None
        tr.put(cp)
        journal.record(tx, "projections retry", {"name": name}, cleared, actor)
        return cp


# -- status ---------------------------------------------------------------------------------------------


@dataclass
class ProjectionStatus:
    name: str
    version: int
    stored_version: str | None
    position: int
    head: int
    lag_events: int
    lag_seconds: float
    state: str
    owner: str | None = None
    error: str | None = None
    error_position: int | None = None
    skipped: list[dict[str, Any]] = field(default_factory=list)
    rebuild_position: int | None = None
    tables: list[str] = field(default_factory=list)
    handles: list[str] = field(default_factory=list)
    last_retry: dict[str, Any] | None = None  # the journal's last `projections retry` of it

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "stored_version": version_number(self.stored_version),
            "position": self.position,
            "head": self.head,
            "lag_events": self.lag_events,
            "lag_seconds": round(self.lag_seconds, 3),
            "state": self.state,
            "owner": self.owner,
            "error": self.error,
            "error_position": self.error_position,
            "skipped": [skip_view(s) for s in self.skipped],
            "rebuild_position": self.rebuild_position,
            "tables": self.tables,
            "handles": self.handles,
            "last_retry": self.last_retry,
        }


def status(store: Store, app: App, names: Sequence[str] | None = None) -> list[ProjectionStatus]:
    out = []
    with store.reader() as tx:
        tr = tx.tracking
        head = tr.head()
        now = tr.now()
        rows = {cp.name: cp for cp in tr.checkpoints()}
        retries = {e.args.get("name"): e.to_dict() for e in tx.journal.select(kinds=["projections retry"])}
        for cls in select(app, names):
            cp = rows.get(cls.name)
            rb = rows.get(REBUILD_PREFIX + cls.name)
            position = cp.position if cp else 0
            lag_seconds = 0.0
            if position < head:
                first = tr.scan(position, 1, cls.handles)
                if first:
                    view = EventView(first[0])
                    lag_seconds = max((now - view.recorded_at).total_seconds(), 0.0)
            stored_version = cp.version if cp else None
            if rb is not None and rb.lease_valid and not dead_here(rb.owner):
                state = "rebuilding"
            elif cp is not None and cp.status == "failed":
                state = "failed"
            elif cp is not None and cp.version != str(cls.version):
                state = "stale-version"
            elif cp is not None and cp.owner and cp.lease_valid:
                state = "running"
            else:
                state = "idle"
            out.append(
                ProjectionStatus(
                    cls.name,
                    cls.version,
                    stored_version,
                    position,
                    head,
                    max(head - position, 0),
                    lag_seconds,
                    state,
                    cp.owner if cp and cp.lease_valid else None,
                    cp.error if cp else None,
                    cp.error_position if cp else None,
                    cp.skipped if cp else [],
                    rb.position if rb else None,
                    list(cls.tables),
                    list(cls.handles),
                    retries.get(cls.name),
                )  # fmt: skip
            )
    return out
