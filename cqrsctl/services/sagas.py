"""Run sagas: follow the events they care about, advance instances, fire deadlines.

Each batch of work runs in one transaction that also dispatches the commands it emits
(`Dispatcher.dispatch_in`): the saga's new state, the command's events and the command
id commit together or not at all, so a crash at any point leaves either the old state
(the work is redone, with the same command ids) or the new one. Commands carry stable
ids (`<saga id>:<step>[:undo|:timeout]`), so a redo is a no-op for anything that
already took effect.

One transaction-scoped lock (`sagas`) is taken per batch: two runners (daemons on
several machines, or cron plus a daemon) never run saga work at the same time; the one
that does not get the lock skips that round.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..app import App, Command
from ..errors import CqrsError, DomainError, NotFoundError, UsageError
from ..saga import Saga, SagaSpec, Step
from ..store import Store, StoredEvent, Transaction, iso
from ..store.base import Deadline, SagaRecord, utcnow
from ..store.tracking import SAGA_CHECKPOINT, Checkpoint
from . import journal
from .dispatch import Dispatcher

LOCK = POSITION = SAGA_CHECKPOINT
BATCH = 100


@dataclass
class RunReport:
    events: int = 0
    started: int = 0
    advanced: int = 0
    deadlines_fired: int = 0
    commands: int = 0
    failed: int = 0
    locked: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "started": self.started,
            "advanced": self.advanced,
            "deadlines_fired": self.deadlines_fired,
            "commands": self.commands,
            "failed": self.failed,
            "locked": self.locked,
        }


@dataclass
class _Run:
    """What one transaction works with."""

    tx: Transaction
    now: datetime
    report: RunReport
    cause: StoredEvent | None = None
    touched: dict[str, SagaRecord] = field(default_factory=dict)


class SagaRunner:
    """Advances the sagas and reactions of `app`. `clock` is injectable so tests need not wait."""

    def __init__(
        self, app: App, store: Store, *, clock: Callable[[], datetime] = utcnow, batch: int = BATCH
    ) -> None:
        self.app, self.store, self.clock = app, store, clock
        # Events (or deadlines) per transaction: smaller batches hold the lock for less time.
        self.batch = batch
        # No aggregate cache: the work runs inside transactions this runner owns.
        self.dispatcher = Dispatcher(app, store, cache_size=0)
        self.types: dict[str, list[tuple[str, Any]]] = {}
        for spec in app.sagas.values():
            for t in spec.starts_on:
                self.types.setdefault(t, []).append(("start", spec))
            for t in spec.waits_for():
                self.types.setdefault(t, []).append(("wait", spec))
        for reaction in app.reactions:
            self.types.setdefault(reaction.event_type, []).append(("react", reaction))

    @property
    def active(self) -> bool:
        return bool(self.types)

    def run_once(self, max_batches: int | None = None) -> RunReport:
        """Process everything that is due now: new events, then due deadlines."""
        report = RunReport()
        if not self.active:
            return report
        batches = 0
        while max_batches is None or batches < max_batches:
            batches += 1
            if not self._events_batch(report):
                break
        while self._deadlines_batch(report):
            pass
        return report

    # -- events ----------------------------------------------------------------------------

    def _events_batch(self, report: RunReport) -> bool:
        """One batch of new events in one transaction; False when there was nothing to do."""
        with self.store.transaction() as tx:
            if not tx.sagas.try_lock(LOCK):
                report.locked = True
                return False
            position = tx.tracking.get(POSITION) or Checkpoint(POSITION, status="running")
            events = tx.read_all(position.position, self.batch, types=list(self.types))
            if not events:
                return False
            run = _Run(tx, self.clock(), report)
            for event in events:
                report.events += 1
                run.cause = event
                for kind, spec in self.types[event.event_type]:
                    if kind == "react":
                        self._react(run, spec, event)
                    else:
                        self._on_event(run, spec, kind, event)
            for saga in run.touched.values():
                tx.sagas.save(saga)
            position.position = events[-1].global_position
            tx.tracking.put(position)
            return len(events) == self.batch

    def _react(self, run: _Run, reaction: Any, event: StoredEvent) -> None:
        command = reaction.make(self.app.decode(event))
        if command is not None:
            self._dispatch(run, command, f"react:{reaction.name}:{event.event_id}", event)

    def _on_event(self, run: _Run, spec: SagaSpec, kind: str, event: StoredEvent) -> None:
        key = spec.cls.correlate(event)
        if not key:
            return
        saga_id = spec.saga_id(key)
        record = run.touched.get(saga_id) or run.tx.sagas.get(saga_id)
        decoded = self.app.decode(event)
        if kind == "start":
            if record is not None:
                return  # started already: a replayed or repeated start event
            state = spec.cls(saga_key=key)
            state.start(decoded)
            now = run.now
            record = SagaRecord(
                saga_id, spec.name, "in_progress", 0,
                [{"name": s.name, "status": "pending"} for s in spec.steps],
                {}, [], state.model_dump(mode="json"),
                str(event.metadata.get("correlation_id") or event.event_id), None, now, now,
            )  # fmt: skip
            run.touched[saga_id] = record
            run.report.started += 1
            self._advance(run, spec, record)
            return
        if record is None or record.status != "in_progress":
            return
        step = spec.steps[record.current_step] if record.current_step < len(spec.steps) else None
        if step is None or step.event_type != event.event_type:
            return
        state = spec.cls.model_validate(record.state)
        if step.on_event is not None:
            step.on_event(state, decoded)
        record.state = state.model_dump(mode="json")
        for d in run.tx.sagas.deadlines(saga_id):
            if d.status == "pending" and d.name == step.name:
                run.tx.sagas.set_deadline_status(d.deadline_id, "cancelled", None)
        self._finish_step(run, record, step, {"event_id": event.event_id, "position": event.global_position})
        run.touched[saga_id] = record
        run.report.advanced += 1
        self._advance(run, spec, record)

    # -- stepping ---------------------------------------------------------------------------

    def _advance(self, run: _Run, spec: SagaSpec, record: SagaRecord) -> None:
        """Run `do` steps until the saga waits, completes, or a step is rejected."""
        state = spec.cls.model_validate(record.state)
        while record.status == "in_progress" and record.current_step < len(spec.steps):
            step = spec.steps[record.current_step]
            if step.wait_for is not None:
                entry = record.steps[record.current_step]
                if entry["status"] != "waiting":
                    entry.update(status="waiting", waitingFor=step.event_type, startedAt=iso(run.now))
                    if step.timeout is not None:
                        run.tx.sagas.add_deadline(
                            Deadline(
                                f"{record.saga_id}:{step.name}", record.saga_id, step.name,
                                run.now + step.timeout, {"step": record.current_step},
                            )
                        )  # fmt: skip
                record.updated_at = run.now
                return
            assert step.do is not None
            command = step.do(state)
            try:
                result = self._dispatch(run, command, f"{record.saga_id}:{step.name}", run.cause)
            except DomainError as exc:
                entry = record.steps[record.current_step]
                entry.update(status="failed", error=str(exc), finishedAt=iso(run.now))
                self._compensate(run, spec, record, state, f"step {step.name} failed: {exc}")
                return
            self._finish_step(run, record, step, result)
        if record.status == "in_progress" and record.current_step >= len(spec.steps):
            record.status = "completed"
            record.updated_at = run.now

    def _finish_step(self, run: _Run, record: SagaRecord, step: Step, result: Any) -> None:
        entry = record.steps[record.current_step]
        entry.update(status="completed", finishedAt=iso(run.now))
        entry.setdefault("startedAt", iso(run.now))
        record.results[step.name] = result
        record.current_step += 1
        record.updated_at = run.now

    def _compensate(self, run: _Run, spec: SagaSpec, record: SagaRecord, state: Saga, reason: str) -> None:
        """Undo the completed steps in reverse order; `failed` if an undo is rejected."""
        record.status = "compensating"
        record.error_message = reason
        for index in range(record.current_step - 1, -1, -1):
            step = spec.steps[index]
            if step.undo is None or record.steps[index]["status"] != "completed":
                continue
            action: dict[str, Any] = {"step": step.name, "status": "pending"}
            record.compensations.append(action)
            command = step.undo(state)
            try:
                result = self._dispatch(run, command, f"{record.saga_id}:{step.name}:undo", run.cause)
            except DomainError as exc:
                action.update(status="failed", error=str(exc), at=iso(run.now))
                record.status = "failed"
                record.error_message = f"{reason}; compensation {step.name} failed: {exc}"
                record.updated_at = run.now
                run.report.failed += 1
                return
            action.update(status="completed", result=result, at=iso(run.now))
            record.steps[index]["status"] = "compensated"
        record.status = "compensated"
        record.updated_at = run.now

    def _dispatch(
        self, run: _Run, command: Command | None, command_id: str, cause: StoredEvent | None
    ) -> Any:
        if command is None:
            return None
        metadata: dict[str, Any] = {"actor": "saga"}
        if cause is not None:
            metadata["causation_id"] = cause.event_id
            metadata["correlation_id"] = cause.metadata.get("correlation_id") or cause.event_id
        result = self.dispatcher.dispatch_in(run.tx, command, command_id=command_id, metadata=metadata)
        run.report.commands += 0 if result.duplicate else 1
        return {"command": result.command, "commandId": result.command_id, "stream": result.stream_id,
                "version": result.version, "eventIds": result.event_ids}  # fmt: skip

    # -- deadlines ---------------------------------------------------------------------------

    def _deadlines_batch(self, report: RunReport) -> bool:
        with self.store.transaction() as tx:
            if not tx.sagas.try_lock(LOCK):
                report.locked = True
                return False
            now = self.clock()
            # A deadline fires only once every followed event stored before it came due is
            # processed: the event that would have moved the saga on (or cancelled the
            # deadline) may still wait in a backlog.
            position = tx.tracking.get(POSITION)
            waiting = tx.read_all(position.position if position else 0, 1, types=list(self.types))
            cutoff = min(now, waiting[0].recorded_at) if waiting else now
            due = tx.sagas.due_deadlines(cutoff, self.batch)
            run = _Run(tx, now, report)
            for deadline in due:
                self._fire(run, deadline)
            for saga in run.touched.values():
                tx.sagas.save(saga)
            return len(due) == self.batch

    def _fire(self, run: _Run, deadline: Deadline) -> None:
        run.tx.sagas.set_deadline_status(deadline.deadline_id, "fired", run.now)
        run.report.deadlines_fired += 1
        record = run.touched.get(deadline.saga_id) or run.tx.sagas.get(deadline.saga_id)
        if record is None or record.status != "in_progress":
            return
        spec = self.app.sagas.get(record.saga_type)
        if spec is None:
            return
        step = spec.steps[record.current_step]
        if step.name != deadline.name:
            return
        state = spec.cls.model_validate(record.state)
        entry = record.steps[record.current_step]
        if step.on_timeout is not None:
            try:
                entry["timeoutResult"] = self._dispatch(
                    run, step.on_timeout(state), f"{record.saga_id}:{step.name}:timeout", None
                )
            except DomainError as exc:
                entry["timeoutError"] = str(exc)
        entry["timedOutAt"] = iso(run.now)
        if step.give_up:
            entry["status"] = "timed_out"
            self._compensate(run, spec, record, state, f"step {step.name} timed out")
            if record.status == "compensated":
                record.status = "timed_out"
        record.updated_at = run.now
        run.touched[record.saga_id] = record

    # -- operator actions ---------------------------------------------------------------------

    def retry(self, saga_id: str, *, actor: str | None = None) -> SagaRecord:
        """Re-run a failed saga's compensation (or, if it failed before compensating, its current step); journaled."""
        with self.store.transaction() as tx:
            record = tx.sagas.get(saga_id)
            if record is None:
                raise NotFoundError(f"saga {saga_id!r} not found")
            if record.status != "failed":
                raise UsageError(f"saga {saga_id} is {record.status}; only failed sagas can be retried")
            spec = self.app.sagas.get(record.saga_type)
            if spec is None:
                raise NotFoundError(f"saga type {record.saga_type!r} is not in the app")
            run = _Run(tx, self.clock(), RunReport())
            state = spec.cls.model_validate(record.state)
            record.compensations = [c for c in record.compensations if c.get("status") == "completed"]
            cleared = record.error_message
            self._compensate(run, spec, record, state, record.error_message or "retried")
            tx.sagas.save(record)
            journal.record(
                tx, "sagas retry", {"saga_id": saga_id}, {"error": cleared, "status": record.status}, actor
            )
            return record


def _snake(key: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", lambda m: "_" + m.group(1).lower(), key)


def _snake_keys(value: Any) -> Any:
    """Our own bookkeeping (steps, results, compensations) is stored with the seeds' camelCase
    keys; every JSON the CLI prints is snake_case, so the view converts them."""
    if isinstance(value, dict):
        return {_snake(k) if isinstance(k, str) else k: _snake_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_snake_keys(v) for v in value]
    return value


def saga_view(record: SagaRecord, deadlines: list[Deadline]) -> dict[str, Any]:
    """The inspection shape (snake_case; `state` is the saga's own data, as stored)."""
    view: dict[str, Any] = {
        "saga_id": record.saga_id,
        "saga_type": record.saga_type,
        "status": record.status,
        "current_step": record.current_step,
        "total_steps": len(record.steps),
        "steps": _snake_keys(record.steps),
        "results": _snake_keys(record.results),
        "compensation_actions": _snake_keys(record.compensations),
        "correlation_id": record.correlation_id,
        "state": record.state,
        "deadlines": [d.to_dict() for d in deadlines],
        "created_at": iso(record.created_at),
        "updated_at": iso(record.updated_at),
        "version": record.version,
    }
    if record.error_message:
        view["error_message"] = record.error_message
    return view


def list_sagas(
    store: Store, status: str | None = None, saga_type: str | None = None, limit: int | None = 100
) -> list[SagaRecord]:
    from ..saga import STATUSES

    if status is not None and status not in STATUSES:
        raise UsageError(f"unknown saga status {status!r}: use one of {', '.join(STATUSES)}")
    with store.reader() as tx:
        return tx.sagas.select(status, saga_type, limit)


def show_saga(store: Store, saga_id: str) -> dict[str, Any]:
    """One saga as stored, with its deadlines (everything is in the store: no app needed)."""
    with store.reader() as tx:
        record = tx.sagas.get(saga_id)
        if record is None:
            raise NotFoundError(f"saga {saga_id!r} not found")
        deadlines = tx.sagas.deadlines(saga_id)
    return saga_view(record, deadlines)


def saga_counts(store: Store) -> dict[str, int]:
    with store.reader() as tx:
        return tx.sagas.counts()


__all__ = ["CqrsError", "RunReport", "SagaRunner", "list_sagas", "saga_counts", "saga_view", "show_saga"]
