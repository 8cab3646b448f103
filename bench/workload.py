"""The one data shape every contender works on: a bank of accounts opened, then deposits.

Everything here is deterministic, so each contender gets the same commands and events,
and each can check its result against the same expected balance.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from decimal import Decimal


def account_id(i: int) -> str:
    return f"A-{i:05d}"


def stream_id(i: int) -> str:
    return f"Account-{account_id(i)}"


def amount(k: int) -> int:
    return k % 97 + 1


def dispatch_plan(commands: int, accounts: int) -> list[tuple[str, int, int]]:
    """`commands` commands over `accounts` accounts: each opened, then deposits in a
    shuffled (but fixed) order. Items are (kind, account index, amount)."""
    accounts = max(1, min(accounts, commands))
    plan = [("open", i, 0) for i in range(accounts)]
    rng = random.Random(7)
    plan += [("deposit", rng.randrange(accounts), amount(k)) for k in range(commands - accounts)]
    return plan


def expected_total(plan: list[tuple[str, int, int]]) -> Decimal:
    return Decimal(sum(a for _, _, a in plan))


def ledger(events: int, accounts: int) -> Iterator[tuple[int, str, int]]:
    """A rebuild's event log in position order: (account index, event type, amount);
    the first `accounts` events open the accounts, the rest deposit round-robin."""
    accounts = max(1, min(accounts, events))
    for i in range(accounts):
        yield i, "AccountOpened", 0
    for k in range(events - accounts):
        yield k % accounts, "MoneyDeposited", amount(k)


def ledger_total(events: int, accounts: int) -> Decimal:
    accounts = max(1, min(accounts, events))
    return Decimal(sum(amount(k) for k in range(events - accounts)))
