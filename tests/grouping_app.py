"""An app for the group-commit tests: every command writes two events (so a half-applied one
would show), publishes them to the outbox, and snapshots every three versions."""

from __future__ import annotations

from cqrsctl.app import Aggregate, App, Command, Event
from cqrsctl.errors import DomainError

app = App("grouping", snapshot_every=3)


class Opened(Event):
    owner: str


class Deposited(Event):
    amount: int


class Counted(Event):
    deposits: int


class Acct(Aggregate, category="Acct"):
    balance: int = 0
    deposits: int = 0

    def when_Opened(self, e: Opened) -> None:
        pass

    def when_Deposited(self, e: Deposited) -> None:
        self.balance += e.amount

    def when_Counted(self, e: Counted) -> None:
        self.deposits = e.deposits


@app.command(aggregate=Acct, stream=lambda c: c.id)
class Open(Command):
    id: str
    owner: str

    def handle(self, acct: Acct) -> list[Event]:
        if acct.version:
            raise DomainError(f"{acct.stream_id} is already open")
        return [Opened(owner=self.owner), Counted(deposits=0)]


@app.command(aggregate=Acct, stream=lambda c: c.id)
class Deposit(Command):
    id: str
    amount: int

    def handle(self, acct: Acct) -> list[Event]:
        if not acct.version:
            raise DomainError(f"{acct.stream_id} is not open")
        if self.amount <= 0:
            raise DomainError(f"a deposit is more than 0, not {self.amount}")
        return [Deposited(amount=self.amount), Counted(deposits=acct.deposits + 1)]


app.publish(Acct)
