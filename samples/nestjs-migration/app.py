"""The domain of a NestJS service moved to cqrsctl: accounts whose history was kept in Kafka
topics (`bank.account.events`) or a DynamoDB table. New events go back to the same topic in
the NestJS shape, so the service's existing consumers read them unchanged."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from pydantic import Field

from cqrsctl.app import Aggregate, App, Command, Event
from cqrsctl.errors import DomainError
from cqrsctl.projection import Projection, Table

app = App("nestjs-migration", outbox_format="nestjs")


class AccountOpened(Event):
    owner: str


class MoneyDeposited(Event):
    amount: Decimal


class MoneyWithdrawn(Event):
    amount: Decimal


class Account(Aggregate, category="Account"):
    owner: str = ""
    balance: Decimal = Decimal(0)

    def when_AccountOpened(self, e: AccountOpened) -> None:
        self.owner = e.owner

    def when_MoneyDeposited(self, e: MoneyDeposited) -> None:
        self.balance += e.amount

    def when_MoneyWithdrawn(self, e: MoneyWithdrawn) -> None:
        self.balance -= e.amount


@app.command(aggregate=Account, stream=lambda c: c.account_id)
class Deposit(Command):
    account_id: str
    amount: Decimal = Field(gt=0, decimal_places=2)

    def handle(self, account: Account) -> list[Event]:
        if not account.exists:
            raise DomainError(f"account {self.account_id} does not exist")
        return [MoneyDeposited(amount=self.amount)]


# The topic the NestJS service used for this aggregate type: `<prefix>.<type, lower-case>.events`.
app.publish(Account, topic="bank.account.events", key=lambda e: e.stream_id.split("-", 1)[1])


class Balances(Projection, name="balances", version=1):
    """One row per account: owner and balance."""

    tables = {
        "balances": Table({"account_id": "text", "owner": "text", "balance": "decimal"}, key=["account_id"])
    }

    def on_AccountOpened(self, event: Any, rm: Any) -> None:
        rm.upsert(
            "balances",
            {"account_id": event.aggregate_id, "owner": event.data["owner"], "balance": Decimal(0)},
        )

    def on_MoneyDeposited(self, event: Any, rm: Any) -> None:
        self._move(event, rm, Decimal(str(event.data["amount"])))

    def on_MoneyWithdrawn(self, event: Any, rm: Any) -> None:
        self._move(event, rm, -Decimal(str(event.data["amount"])))

    def _move(self, event: Any, rm: Any, delta: Decimal) -> None:
        row = rm.edit("balances", account_id=event.aggregate_id)
        if row is not None:
            row["balance"] += delta


app.projection(Balances)


@app.query()
def balances(ctx: Any) -> list[dict[str, Any]]:
    """Every account's row of the `balances` projection."""
    return ctx.all("balances", order_by=["account_id"])  # type: ignore[no-any-return]
