"""Wake-ups on PostgreSQL: LISTEN on the store's channel, on a connection of its own.

Appending transactions send a NOTIFY after their commit (see PostgresStore.transaction);
a follower waiting here hears it at once instead of at its next poll.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import psycopg

from ...errors import DatabaseError
from ...redaction import scrub
from ..base import Wakeups

if TYPE_CHECKING:
    from .store import PostgresStore

# How often an idle listener asks its connection whether it is still there: a connection
# that died quietly would otherwise never deliver, and never fail either.
_CHECK_EVERY = 5.0


class Listener(Wakeups):
    def __init__(self, store: PostgresStore) -> None:
        self.store = store
        self.conn: psycopg.Connection[Any] | None = None
        self.checked = 0.0

    def wait(self, timeout: float) -> bool:
        try:
            if self.conn is None:
                self.conn = self.store.connect()
                self.conn.execute(f'LISTEN "{self.store.channel}"')
                self.checked = time.monotonic()
                return True  # anything appended while nobody listened
            if list(self.conn.notifies(timeout=max(0.0, timeout), stop_after=1)):
                return True
            if time.monotonic() - self.checked > _CHECK_EVERY:
                self.conn.execute("SELECT 1")
                self.checked = time.monotonic()
            return False
        except psycopg.Error as exc:
            self.close()
            reason = scrub(" ".join(str(exc).split()) or type(exc).__name__, self.store.url)
            raise DatabaseError(f"postgresql: {reason}") from None

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:
                pass
