"""Who holds a lease: `kind:host:pid:random`, and whether that process is gone.

Leases (projections, rebuilds, outbox claims, daemons) name their owner this way so that a
process on the same machine can see that the owner died (kill -9, OOM) and take over at
once instead of waiting for the lease to run out.
"""

from __future__ import annotations

import os
import secrets
import socket


def owner_id(kind: str) -> str:
    """`kind:host:pid:random`: unique, and says who holds a lease."""
    return f"{kind}:{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def dead_here(owner: str | None) -> bool:
    """True when `owner` was a process on this machine that no longer runs."""
    if not owner:
        return False
    parts = owner.split(":")
    if len(parts) < 4 or parts[1] != socket.gethostname() or not parts[2].isdigit():
        return False
    pid = int(parts[2])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:  # a killed child its parent has not reaped yet is a zombie: gone too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False
