"""Writes commands.jsonl: a deterministic day at a small bank (every command succeeds)."""

from __future__ import annotations

import json
import random
import sys
from decimal import Decimal
from pathlib import Path


def commands(accounts: int = 120, operations: int = 1000, seed: int = 7) -> list[dict[str, object]]:
    rng = random.Random(seed)
    owners = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Tim"]
    out: list[dict[str, object]] = []
    balance: dict[str, Decimal] = {}
    for i in range(1, accounts + 1):
        acc = f"A-{i:04d}"
        balance[acc] = Decimal(0)
        out.append(
            {
                "command": "OpenAccount",
                "id": f"open-{acc}",
                "data": {"account_id": acc, "owner": rng.choice(owners)},
            }
        )
    ids = sorted(balance)
    for n in range(operations):
        acc = rng.choice(ids)
        amount = Decimal(rng.randint(1, 50000)) / 100
        if rng.random() < 0.65 or balance[acc] - amount < -100:
            balance[acc] += amount
            out.append(
                {"command": "Deposit", "id": f"op-{n}", "data": {"account_id": acc, "amount": str(amount)}}
            )
        else:
            balance[acc] -= amount
            out.append(
                {"command": "Withdraw", "id": f"op-{n}", "data": {"account_id": acc, "amount": str(amount)}}
            )
    for acc in ids[-5:]:  # empty and close a few accounts
        if balance[acc] > 0:
            out.append(
                {
                    "command": "Withdraw",
                    "id": f"empty-{acc}",
                    "data": {"account_id": acc, "amount": str(balance[acc])},
                }
            )
        elif balance[acc] < 0:
            out.append(
                {
                    "command": "Deposit",
                    "id": f"empty-{acc}",
                    "data": {"account_id": acc, "amount": str(-balance[acc])},
                }
            )
        out.append({"command": "CloseAccount", "id": f"close-{acc}", "data": {"account_id": acc}})
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("commands.jsonl")
    target.write_text("".join(json.dumps(c) + "\n" for c in commands()))
