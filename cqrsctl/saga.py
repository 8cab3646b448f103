"""Sagas (process managers) as users declare them: state, ordered steps, compensations.

```python
@app.saga(starts_on=TransferRequested)
class Transfer(Saga):
    source: str = ""
    destination: str = ""
    amount: Decimal = Decimal(0)

    steps = [
        Step("debit_source",
             do=lambda s: Withdraw(account_id=s.source, amount=s.amount),
             undo=lambda s: Deposit(account_id=s.source, amount=s.amount)),
        Step("credit_destination", do=lambda s: Deposit(account_id=s.destination, amount=s.amount)),
        Step("complete_transaction", do=lambda s: CompleteTransfer(transfer_id=s.saga_key)),
    ]
```

A step either dispatches a command (`do`) and moves on when it succeeds, or waits for
an event (`wait_for`) of the same correlation, optionally with a durable `timeout`.
When a `do` is rejected (DomainError), the `undo` commands of the steps already done run
in reverse order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from .app import Command, Event
from .errors import UsageError
from .store import StoredEvent

STATUSES = ("in_progress", "completed", "compensating", "compensated", "failed", "timed_out")

CommandFactory = Callable[[Any], Command | None]


@dataclass
class Step:
    """One step of a saga.

    - `do(saga)` returns the command to dispatch (or None to skip); `undo(saga)` the
      command that compensates it when a later step fails.
    - `wait_for` names an event type to wait for (correlated like the starting event);
      `on_event(saga, event)` may copy data from it into the saga's state.
    - `timeout` with `on_timeout(saga)`: a durable timer; when it fires before the event
      arrives, the command is dispatched. With `give_up=True` the saga then ends
      `timed_out` (after compensating what was done); otherwise it keeps waiting.
    """

    name: str
    do: CommandFactory | None = None
    undo: CommandFactory | None = None
    wait_for: type[Event] | str | None = None
    on_event: Callable[[Any, Any], None] | None = None
    timeout: timedelta | None = None
    on_timeout: CommandFactory | None = None
    give_up: bool = False

    def __post_init__(self) -> None:
        if (self.do is None) == (self.wait_for is None):
            raise UsageError(f"saga step {self.name!r} needs exactly one of do= or wait_for=")
        if self.timeout is not None and self.wait_for is None:
            raise UsageError(f"saga step {self.name!r}: timeout= applies to wait_for= steps")

    @property
    def event_type(self) -> str | None:
        if self.wait_for is None or isinstance(self.wait_for, str):
            return self.wait_for
        return self.wait_for.event_type


class Saga(BaseModel):
    """The state of one saga instance (a pydantic model, stored as JSON).

    `start(event)` fills it from the starting event; by default fields are copied from the
    event's data by name. `correlate(event)` gives the key that ties events to an
    instance; by default the event's stream id.
    """

    model_config = ConfigDict(extra="ignore")

    steps: ClassVar[list[Step]] = []
    saga_key: str = ""

    def start(self, event: Any) -> None:
        data = event.model_dump() if isinstance(event, BaseModel) else getattr(event, "data", {})
        for name in type(self).model_fields:
            if name in data and name != "saga_key":
                setattr(self, name, data[name])

    @classmethod
    def correlate(cls, event: StoredEvent) -> str | None:
        return event.stream_id


@dataclass
class SagaSpec:
    name: str
    cls: type[Saga]
    starts_on: tuple[str, ...]

    @property
    def steps(self) -> list[Step]:
        return self.cls.steps

    def waits_for(self) -> set[str]:
        return {s.event_type for s in self.steps if s.event_type}

    def saga_id(self, key: str) -> str:
        return f"{self.name}-{key}"


@dataclass
class Reaction:
    """A stateless event → command rule (the `@Saga() ofType(...) map(...)` one-liner)."""

    name: str
    event_type: str
    make: Callable[[Any], Command | None]


def type_name(t: type[Event] | str) -> str:
    return t if isinstance(t, str) else t.event_type
