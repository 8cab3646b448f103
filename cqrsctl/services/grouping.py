"""Group commit: many small units of work (dispatched commands, appended lines) per
transaction, each in a savepoint of its own.

A commit costs a round trip and, at full durability, a wait for the disk; a batch that pays
it once per group instead of once per unit goes many times faster. What a group changes,
and what it does not:

- A unit that fails rolls back alone (its savepoint); the units before it in the group
  commit with the group.
- Outcomes are handed over (`committed`) only once their transaction has committed: a
  unit never counts as done while it could still be undone.
- A crash loses the group in flight, whole: after it the store holds whole units only.
- When the database undoes the transaction to resolve a conflict (a deadlock, a
  serialization failure: `ConflictError`), nothing of the group was committed, so the group
  is run again from its first unit, halved each time, at most `retries` times; then its
  first unit fails with that error.
- A unit meeting a stream that another transaction holds (`StreamBusy`, PostgreSQL) ends
  the group before that unit, which starts the next one: a transaction holding streams
  never waits for another (two groups waiting for each other would deadlock).
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from ..errors import ConflictError, CqrsError, UsageError
from ..store import Store, Transaction
from ..store.base import StreamBusy

# Commands per transaction, and how long (ms) a transaction goes on taking more of them.
# 100 commands cost a few milliseconds of work against one commit; 50 ms bounds how long a
# group holds SQLite's write lock, and how long PostgreSQL followers wait behind it.
DEFAULT_GROUP = 100
DEFAULT_GROUP_MS = 50.0

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Grouping:
    """At most `size` units per transaction, and no new unit once it is `ms` old."""

    size: int = DEFAULT_GROUP
    ms: float = DEFAULT_GROUP_MS

    def __post_init__(self) -> None:
        if self.size < 1:
            raise UsageError(f"a group holds at least one command, not {self.size}")
        if self.ms < 0:
            raise UsageError(f"a group's time bound is at least 0 ms, not {self.ms:g}")


ONE_PER_TRANSACTION = Grouping(1, 0)


class _Todo(Generic[T]):
    """The units not yet committed, in order; a rolled-back group's go back in front."""

    def __init__(self, items: Iterable[T]) -> None:
        self._source: Iterator[T] = iter(items)
        self._front: deque[T] = deque()

    def peek(self) -> T | None:
        if not self._front:
            for item in self._source:
                self._front.append(item)
                break
        return self._front[0] if self._front else None

    def take(self) -> T:
        return self._front.popleft()

    def give_back(self, items: list[T]) -> None:
        self._front.extendleft(reversed(items))


@dataclass
class GroupRun(Generic[T, R]):
    """Runs `step(tx, unit)` for each unit, in groups. `step` runs its unit in a savepoint
    and returns its outcome, a failure included; `failed(outcome)` tells failures, which
    stop the run when `stop_on_failure`; `failure(unit, error)` makes the outcome of a unit
    whose group kept conflicting. `committed(outcomes)` hears of each committed group,
    `rolled_back()` of each group the database undid."""

    store: Store
    step: Callable[[Transaction, T], R]
    failed: Callable[[R], bool]
    failure: Callable[[T, CqrsError], R]
    committed: Callable[[list[R]], None]
    rolled_back: Callable[[], None] = lambda: None
    grouping: Grouping = Grouping()
    stop_on_failure: bool = True
    retries: int = 3

    def run(self, items: Iterable[T]) -> None:
        todo = _Todo(items)
        while todo.peek() is not None:
            outcomes = self._group(todo)
            if self.stop_on_failure and outcomes and self.failed(outcomes[-1]):
                return

    def _group(self, todo: _Todo[T]) -> list[R]:
        size, attempts = self.grouping.size, 0
        while True:
            taken: list[T] = []
            try:
                outcomes, error = self._fill(todo, taken, size)
            except ConflictError as exc:
                self.rolled_back()
                todo.give_back(taken)
                attempts += 1
                if attempts > self.retries:
                    outcome = self.failure(todo.take(), exc)
                    self.committed([outcome])
                    return [outcome]
                # A smaller group meets fewer others; the pause lets the other side finish.
                size = max(1, size // 2)
                time.sleep(random.uniform(0, 0.005 * 2**attempts))
                continue
            self.committed(outcomes)
            if error is not None:
                raise error
            return outcomes

    def _fill(self, todo: _Todo[T], taken: list[T], size: int) -> tuple[list[R], Exception | None]:
        """One transaction: units until the group is full or old enough. An unexpected
        error (a bug in a handler) ends the group; the units before it still commit."""
        outcomes: list[R] = []
        error: Exception | None = None
        with self.store.transaction(appending=True) as tx:
            deadline = time.monotonic() + self.grouping.ms / 1000
            while len(outcomes) < size:
                unit = todo.peek()
                if unit is None or (outcomes and time.monotonic() >= deadline):
                    break
                tx.nowait = bool(outcomes)  # holding streams: never wait for another's
                try:
                    outcome = self.step(tx, unit)
                except StreamBusy:
                    break
                except ConflictError:
                    raise
                except Exception as exc:
                    error = exc
                    break
                taken.append(todo.take())
                outcomes.append(outcome)
                if self.stop_on_failure and self.failed(outcome):
                    break
        return outcomes, error
