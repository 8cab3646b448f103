"""Outbox sinks: where `outbox drain` delivers messages, chosen by URL scheme.

Every sink has the same small interface (:class:`Sink`): `open()`, `send(messages)` and
`close()`. `send` reports per message (None = delivered, a string = why that message was
refused) and raises :class:`SinkUnavailable` when the sink itself cannot be reached, so
the drain can tell "this message was refused" (counts as an attempt, backs off) from
"the broker is down" (attempts unchanged: an outage never dead-letters messages).
Broker clients are optional extras, imported only when their sink is opened.
"""

from __future__ import annotations

import importlib
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..errors import DeliveryError, UsageError
from ..redaction import redact, scrub
from ..store.base import OutboxMessage
from .formats import Encoded, Formatter

__all__ = ["Sink", "SinkUnavailable", "open_sink"]


class SinkUnavailable(DeliveryError):
    """The sink could not be reached or refused the connection."""


class Sink(ABC):
    """One destination. `name` is the URL with any password hidden, for messages and logs."""

    #: The most messages one `send` call takes (None: a whole claimed batch).
    batch_size: int | None = None
    #: Set by the drain between a successful `open()` and `close()`.
    is_open: bool = False
    #: Set by the drain before each `send`: the `time.monotonic()` by which the call must
    #: return (the send timeout, or sooner when the lease ends sooner). Sinks bound their
    #: waits with :meth:`time_left`; the drain abandons a call that overruns it anyway.
    deadline: float | None = None
    #: True when `open` and `send` themselves return by the deadline whatever the peer
    #: does; the drain then calls them directly rather than on a thread it can abandon.
    keeps_deadline: bool = False
    #: True when `send` sends its messages all at once: the drain then gives it at most
    #: one message per (topic, key), so order per key never depends on the sink.
    parallel: bool = False
    #: Header prefix for CloudEvents binary mode; None: this sink cannot carry it.
    binary_prefix: str | None = None

    def __init__(self, url: str, timeout: float = 10.0, format: str | None = None) -> None:
        self.url = url
        self.name = redact(url)
        self.timeout = timeout
        parts = urlsplit(url)
        self.options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        name = self.option("format") or format or "cqrsctl"
        self.formatter = Formatter(name, self.options, self.name, self.binary_prefix)
        self.format = self.formatter.name

    def encode(self, message: OutboxMessage) -> Encoded:
        """`message` in this sink's format (see cqrsctl.sinks.formats)."""
        return self.formatter.encode(message)

    def open(self) -> None:  # noqa: B027 - sinks without a connection need nothing here
        """Connect; raise SinkUnavailable naming the sink when that fails."""

    @abstractmethod
    def send(self, messages: Sequence[OutboxMessage]) -> list[str | None]:
        """Deliver `messages` in order: per message None (delivered) or why it was refused.

        The list may be shorter than `messages`: the rest was not sent (a sink that sends
        one at a time stops at a refusal, so later messages of that key keep waiting)."""

    def close(self) -> None:  # noqa: B027
        """Release the connection; never raises."""

    def time_left(self) -> float:
        """Seconds the call in hand may still wait: the send timeout, cut to the deadline."""
        if self.deadline is None:
            return self.timeout
        return max(0.0, min(self.timeout, self.deadline - time.monotonic()))

    def unavailable(self, exc: BaseException | str) -> SinkUnavailable:
        reason = exc if isinstance(exc, str) else (" ".join(str(exc).split()) or type(exc).__name__)
        return SinkUnavailable(f"sink {self.name} is unavailable: {self.scrub(reason)}")

    def scrub(self, text: str) -> str:
        """`text` without this sink's secrets (for messages, logs and stored errors)."""
        return scrub(text, self.url)

    def option(self, name: str, default: str | None = None) -> str | None:
        return self.options.get(name, default)

    def __enter__(self) -> Sink:
        self.open()
        self.is_open = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        self.is_open = False


_SCHEMES = {
    "stdout": "cqrsctl.sinks.stream:StdoutSink",
    "file": "cqrsctl.sinks.stream:FileSink",
    "http": "cqrsctl.sinks.http:HttpSink",
    "https": "cqrsctl.sinks.http:HttpSink",
    "redis": "cqrsctl.sinks.redis:RedisSink",
    "rediss": "cqrsctl.sinks.redis:RedisSink",
    "nats": "cqrsctl.sinks.nats:NatsSink",
    "amqp": "cqrsctl.sinks.amqp:AmqpSink",
    "amqps": "cqrsctl.sinks.amqp:AmqpSink",
    "kafka": "cqrsctl.sinks.kafka:KafkaSink",
    "bullmq": "cqrsctl.sinks.bullmq:BullMQSink",
}


def open_sink(url: str, *, timeout: float = 10.0, format: str | None = None) -> Sink:
    """The (not yet connected) sink for `url`: stdout, file:///x.jsonl, http(s), redis, nats, amqp,
    kafka, bullmq. `format` is the message format when the URL has no `?format=`."""
    scheme = "stdout" if url.split("?", 1)[0] in ("stdout", "-") else urlsplit(url).scheme
    target = _SCHEMES.get(scheme)
    if target is None:
        raise UsageError(
            f"unsupported sink {redact(url)!r}: use stdout, file:///path.jsonl, http(s)://…, redis://…,"
            " nats://…, amqp://…, kafka://… or bullmq://…"
        )
    module, cls = target.split(":")
    sink: Any = getattr(importlib.import_module(module), cls)
    return sink(url, timeout=timeout, format=format)  # type: ignore[no-any-return]


def require(module: str, extra: str, sink: str) -> Any:
    """Import an optional broker client, or fail with the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(
            f"the {sink} sink needs the {module!r} package: pip install 'cqrsctl[{extra}]'"
        ) from None
