"""Bank sample: open, deposit, withdraw (with an overdraft limit), close."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from pydantic import Field

from cqrsctl.app import Aggregate, App, Command, Event
from cqrsctl.errors import DomainError
from cqrsctl.projection import Projection, Table
from cqrsctl.saga import Saga, Step

app = App("bank", snapshot_every=50)

OVERDRAFT_LIMIT = Decimal(100)


class AccountOpened(Event):
    owner: str


class MoneyDeposited(Event):
    amount: Decimal


class MoneyWithdrawn(Event):
    amount: Decimal


class AccountClosed(Event):
    pass


class Account(Aggregate, category="Account"):
    owner: str = ""
    balance: Decimal = Decimal(0)
    closed: bool = False

    def when_AccountOpened(self, e: AccountOpened) -> None:
        self.owner = e.owner

    def when_MoneyDeposited(self, e: MoneyDeposited) -> None:
        self.balance += e.amount

    def when_MoneyWithdrawn(self, e: MoneyWithdrawn) -> None:
        self.balance -= e.amount

    def when_AccountClosed(self, e: AccountClosed) -> None:
        self.closed = True

    def require_open(self) -> None:
        if not self.exists:
            raise DomainError(f"account {self.stream_id} is not open")
        if self.closed:
            raise DomainError(f"account {self.stream_id} is closed")


def _account(c: Any) -> str:
    return str(c.account_id)


@app.command(aggregate=Account, stream=_account)
class OpenAccount(Command):
    account_id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_-]+$")
    owner: str = Field(min_length=1)

    def handle(self, account: Account) -> list[Event]:
        if account.exists:
            raise DomainError(f"account {account.stream_id} is already open")
        return [AccountOpened(owner=self.owner)]


@app.command(aggregate=Account, stream=_account)
class Deposit(Command):
    account_id: str
    amount: Decimal = Field(gt=0, decimal_places=2)

    def handle(self, account: Account) -> list[Event]:
        account.require_open()
        return [MoneyDeposited(amount=self.amount)]


@app.command(aggregate=Account, stream=_account)
class Withdraw(Command):
    account_id: str
    amount: Decimal = Field(gt=0, decimal_places=2)

    def handle(self, account: Account) -> list[Event]:
        account.require_open()
        if account.balance - self.amount < -OVERDRAFT_LIMIT:
            raise DomainError(
                f"withdrawing {self.amount} would take {account.stream_id} below its overdraft limit "
                f"(balance {account.balance}, limit -{OVERDRAFT_LIMIT})"
            )
        return [MoneyWithdrawn(amount=self.amount)]


@app.command(aggregate=Account, stream=_account)
class CloseAccount(Command):
    account_id: str

    def handle(self, account: Account) -> list[Event]:
        account.require_open()
        if account.balance != 0:
            raise DomainError(
                f"account {account.stream_id} has balance {account.balance}; it must be 0 to close"
            )
        return [AccountClosed()]


# Integration events: every account event goes to the outbox with its dispatch, on topic
# "Account.events" keyed by the stream id, so consumers see each account's events in order.
app.publish(Account)


@app.query()
def account(ctx: Any, account_id: str) -> dict[str, Any]:
    """The current state of one account, folded from its events."""
    state = ctx.load(f"Account-{account_id}")
    return {"account_id": account_id, **state.state(), "version": state.version}


# -- transfers: a saga moves money between accounts, refunding the source on failure -----


class TransferRequested(Event):
    source: str
    destination: str
    amount: Decimal


class TransferCompleted(Event):
    pass


class Transfer(Aggregate, category="Transfer"):
    source: str = ""
    destination: str = ""
    amount: Decimal = Decimal(0)
    completed: bool = False

    def when_TransferRequested(self, e: TransferRequested) -> None:
        self.source, self.destination, self.amount = e.source, e.destination, e.amount

    def when_TransferCompleted(self, e: TransferCompleted) -> None:
        self.completed = True


@app.command(aggregate=Transfer, stream=lambda c: c.transfer_id)
class TransferMoney(Command):
    transfer_id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_-]+$")
    source: str
    destination: str
    amount: Decimal = Field(gt=0, decimal_places=2)

    def handle(self, transfer: Transfer) -> list[Event]:
        if transfer.exists:
            raise DomainError(f"transfer {transfer.stream_id} was already requested")
        if self.source == self.destination:
            raise DomainError("source and destination must differ")
        return [TransferRequested(source=self.source, destination=self.destination, amount=self.amount)]


@app.command(aggregate=Transfer, stream=lambda c: c.transfer_id)
class CompleteTransfer(Command):
    transfer_id: str

    def handle(self, transfer: Transfer) -> list[Event]:
        if not transfer.exists:
            raise DomainError(f"transfer {transfer.stream_id} does not exist")
        return [] if transfer.completed else [TransferCompleted()]


@app.saga(starts_on=TransferRequested)
class TransferSaga(Saga):
    """debit_source → credit_destination → complete_transaction; a rejected credit refunds the source."""

    source: str = ""
    destination: str = ""
    amount: Decimal = Decimal(0)

    steps = [
        Step(
            "debit_source",
            do=lambda s: Withdraw(account_id=s.source, amount=s.amount),
            undo=lambda s: Deposit(account_id=s.source, amount=s.amount),
        ),
        Step("credit_destination", do=lambda s: Deposit(account_id=s.destination, amount=s.amount)),
        Step(
            "complete_transaction",
            do=lambda s: CompleteTransfer(transfer_id=s.saga_key.removeprefix("Transfer-")),
        ),
    ]


# -- read side: projections and the queries that read them --------------------------------


def _amount(event: Any) -> Decimal:
    amount = event.data["amount"]
    return Decimal(amount if isinstance(amount, str) else str(amount))


class Balances(Projection, name="balances", version=1):
    """One row per account: owner, balance, closed, and the position it was last changed at."""

    tables = {
        "balances": Table(
            {
                "account_id": "text",
                "owner": "text",
                "balance": "decimal",
                "closed": "bool",
                "updated_position": "int",
            },
            key=["account_id"],
            indexes=[["owner"]],
        )
    }

    def on_AccountOpened(self, event: Any, rm: Any) -> None:
        rm.upsert("balances", {
            "account_id": event.aggregate_id, "owner": event.data["owner"], "balance": Decimal(0),
            "closed": False, "updated_position": event.position,
        })  # fmt: skip

    def on_MoneyDeposited(self, event: Any, rm: Any) -> None:
        self._move(event, rm, _amount(event))

    def on_MoneyWithdrawn(self, event: Any, rm: Any) -> None:
        self._move(event, rm, -_amount(event))

    def on_AccountClosed(self, event: Any, rm: Any) -> None:
        rm.update(
            "balances", {"account_id": event.aggregate_id, "closed": True, "updated_position": event.position}
        )

    def _move(self, event: Any, rm: Any, delta: Decimal) -> None:
        row = rm.edit("balances", account_id=event.aggregate_id)  # the row itself, changed in place
        if row is not None:
            row["balance"] += delta
            row["updated_position"] = event.position


class DailyTotals(Projection, name="daily_totals", version=1):
    """Per UTC day: money deposited, money withdrawn, and how many movements."""

    tables = {
        "daily_totals": Table(
            {"day": "text", "deposits": "decimal", "withdrawals": "decimal", "count": "int"}, key=["day"]
        )
    }

    def on_MoneyDeposited(self, event: Any, rm: Any) -> None:
        self._add(event, rm, "deposits")

    def on_MoneyWithdrawn(self, event: Any, rm: Any) -> None:
        self._add(event, rm, "withdrawals")

    def _add(self, event: Any, rm: Any, column: str) -> None:
        day = event.recorded_at.date().isoformat()
        row = rm.edit("daily_totals", day=day)
        if row is None:
            rm.insert(
                "daily_totals", {"day": day, "deposits": Decimal(0), "withdrawals": Decimal(0), "count": 0}
            )
            row = rm.edit("daily_totals", day=day)
        row[column] += _amount(event)
        row["count"] += 1


app.projection(Balances)
app.projection(DailyTotals)


@app.query()
def balances(ctx: Any, owner: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
    """Account balances from the `balances` projection (optionally one owner's)."""
    where = {"owner": owner} if owner else {}
    return ctx.all("balances", order_by=["account_id"], limit=limit, **where)  # type: ignore[no-any-return]


@app.query()
def balance(ctx: Any, account_id: str) -> dict[str, Any]:
    """One account's row of the `balances` projection."""
    return ctx.one("balances", account_id=account_id)  # type: ignore[no-any-return]


@app.query()
def daily_totals(ctx: Any, limit: int = 31) -> list[dict[str, Any]]:
    """Deposits and withdrawals per day, latest first."""
    return ctx.all("daily_totals", order_by=["-day"], limit=limit)  # type: ignore[no-any-return]
