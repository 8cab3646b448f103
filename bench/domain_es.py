"""The bank written for `eventsourcing`, as its documentation shows aggregates and apps."""

from __future__ import annotations

from decimal import Decimal
from functools import lru_cache
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import StoredEvent

_NAMESPACE = UUID("6ba7b811-9dad-11d1-80b4-00c04fd430c8")


class Account(Aggregate):
    @event("Opened")
    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.balance = Decimal(0)

    @event("Deposited")
    def deposit(self, amount: Decimal) -> None:
        self.balance += amount


class Bank(Application[UUID]):
    name = "Bank"


@lru_cache(maxsize=100_000)
def account_uuid(i: int) -> UUID:
    return uuid5(_NAMESPACE, f"account-{i}")


class StoredEvents:
    """Builds eventsourcing's stored events for seeding, much faster than going through
    aggregates: the state bytes come from the app's own mapper once per distinct value."""

    def __init__(self, app: Bank) -> None:
        self.app = app
        self._deposits: dict[int, tuple[str, bytes]] = {}
        probe = Account(owner="probe")
        opened = probe.collect_events()[0]
        self.opened_topic = self.app.mapper.to_stored_event(opened).topic

    def opened(self, i: int, version: int = 1) -> StoredEvent:
        acc = Account(owner=f"owner-{i}")
        stored = self.app.mapper.to_stored_event(acc.collect_events()[0])
        return StoredEvent(account_uuid(i), version, stored.topic, stored.state)

    def deposit(self, i: int, version: int, amount: int) -> StoredEvent:
        found = self._deposits.get(amount)
        if found is None:
            acc = Account(owner="probe")
            acc.deposit(Decimal(amount))
            stored = self.app.mapper.to_stored_event(acc.collect_events()[1])
            found = self._deposits[amount] = (stored.topic, stored.state)
        return StoredEvent(account_uuid(i), version, found[0], found[1])


def fold(balances: dict[Any, Decimal], ev: Any) -> None:
    # The @event decorator makes the nested event classes, which type checkers cannot see.
    if isinstance(ev, Account.Deposited):  # type: ignore[attr-defined]
        balances[ev.originator_id] = balances.get(ev.originator_id, Decimal(0)) + ev.amount
    elif isinstance(ev, Account.Opened):  # type: ignore[attr-defined]
        balances.setdefault(ev.originator_id, Decimal(0))
