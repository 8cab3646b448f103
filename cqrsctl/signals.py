"""Stopping on SIGINT and SIGTERM, the one way every long-running command does it."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _interrupt() -> None:
    raise KeyboardInterrupt


@contextmanager
def on_stop(
    first: Callable[[], None] | None = None, again: Callable[[], None] = _interrupt
) -> Iterator[Callable[[], bool]]:
    """While inside, SIGINT and SIGTERM ask for a stop: the first calls `first`, any later one
    calls `again` (by default a KeyboardInterrupt: the work in hand is abandoned). Yields
    `stopping()`, true once a signal came. The previous handlers are restored on the way
    out. Main thread only, as Python's signal handlers are."""
    came: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if came:
            again()
            return
        came.append(signum)
        if first is not None:
            first()

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield lambda: bool(came)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
