"""Wake-ups on SQLite: there are none (SQLite cannot notify another process), so a
follower looks again after its poll interval (`SQLiteStore.poll_interval`)."""

from __future__ import annotations

import time

from ..base import Wakeups


class Polling(Wakeups):
    """Never any word of an append: every wait runs out."""

    def wait(self, timeout: float) -> bool:
        time.sleep(max(0.0, timeout))
        return False

    def close(self) -> None:
        pass
