"""The measurements, in the order the tables list them."""

from __future__ import annotations

from ..core import Measurement
from . import append, batch, dispatch, latency, outbox, rebuild, replay, shared, writers

ALL: list[Measurement] = [
    dispatch.MEASUREMENT,
    batch.MEASUREMENT,
    append.MEASUREMENT,
    replay.MEASUREMENT,
    rebuild.MEASUREMENT,
    latency.MEASUREMENT,
    outbox.MEASUREMENT,
    writers.MEASUREMENT,
    shared.MEASUREMENT,
]
