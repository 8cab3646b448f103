"""The bank written for cqrsctl, as a user would: commands, events, one aggregate.

Importing this module fails with ImportError while the app model is not there; the
contenders using it turn that into n/a (see core.needs_cqrsctl).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from pydantic import Field

from cqrsctl.app import Aggregate, App, Command, DomainError, Event

app = App("bank")
# The same domain with snapshots switched on, for the replay-with-snapshot measurement;
# the interval is never reached by appends, so only the explicit snapshot exists.
snapshot_app = App("bank", snapshot_every=1_000_000_000)


class AccountOpened(Event):
    owner: str


class MoneyDeposited(Event):
    amount: Decimal


class Account(Aggregate, category="Account"):
    owner: str = ""
    balance: Decimal = Decimal(0)

    def when_AccountOpened(self, e: AccountOpened) -> None:
        self.owner = e.owner

    def when_MoneyDeposited(self, e: MoneyDeposited) -> None:
        self.balance += e.amount


# The aggregate id is the account id; cqrsctl prefixes the category: `Account-A-00001`.
@app.command(aggregate=Account, stream=lambda c: c.account_id)
class OpenAccount(Command):
    account_id: str
    owner: str

    def handle(self, account: Account) -> list[Event]:
        if account.exists:
            raise DomainError("account already open")
        return [AccountOpened(owner=self.owner)]


@app.command(aggregate=Account, stream=lambda c: c.account_id)
class Deposit(Command):
    account_id: str
    amount: Decimal = Field(gt=0)

    def handle(self, account: Account) -> list[Event]:
        if not account.exists:
            raise DomainError("account is not open")
        return [MoneyDeposited(amount=self.amount)]


snapshot_app.aggregate(Account)

# The same domain publishing every account event to the outbox, for the cost of publishing.
publishing_app = App("bank")
for _command in (OpenAccount, Deposit):
    publishing_app.command(aggregate=Account, stream=lambda c: c.account_id)(_command)
publishing_app.publish(Account)


def balances_projection() -> Any:
    """The balances read model (account id → balance) as a cqrsctl projection."""
    from cqrsctl.projection import Projection, Table

    class Balances(Projection, name="bench_balances", version=1):
        tables = {"balances": Table({"account_id": "text", "balance": "decimal"}, key=["account_id"])}

        def on_AccountOpened(self, event: Any, rm: Any) -> None:
            rm.upsert("balances", {"account_id": event.aggregate_id, "balance": Decimal(0)})

        def on_MoneyDeposited(self, event: Any, rm: Any) -> None:
            row = rm.get("balances", account_id=event.aggregate_id) or {"balance": Decimal(0)}
            rm.upsert(
                "balances",
                {"account_id": event.aggregate_id, "balance": row["balance"] + Decimal(event.data["amount"])},
            )

    return Balances
