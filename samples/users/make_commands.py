"""Writes commands.jsonl for the users sample (every command succeeds)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def commands(users: int = 60) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for i in range(1, users + 1):
        uid = f"U-{i:03d}"
        out.append(
            {
                "command": "RegisterUser",
                "id": f"reg-{uid}",
                "data": {"user_id": uid, "email": f"User{i}@Example.org", "name": f"User {i}"},
            }
        )
        if i % 4:
            out.append({"command": "VerifyUser", "id": f"verify-{uid}", "data": {"user_id": uid}})
        if i % 4 == 1:
            out.append(
                {
                    "command": "ChangeRole",
                    "id": f"role-{uid}",
                    "data": {"user_id": uid, "role": "moderator" if i % 3 else "admin"},
                }
            )
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("commands.jsonl")
    target.write_text("".join(json.dumps(c) + "\n" for c in commands()))
