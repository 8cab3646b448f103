"""The measurements, in the order the tables list them."""

from __future__ import annotations

from ..core import Measurement
from . import append, dispatch, latency, outbox, rebuild, replay

ALL: list[Measurement] = [
    dispatch.MEASUREMENT,
    append.MEASUREMENT,
    replay.MEASUREMENT,
    rebuild.MEASUREMENT,
    latency.MEASUREMENT,
    outbox.MEASUREMENT,
]
