"""`amqp://user:pass@host:port/vhost?exchange=NAME`: publish with publisher confirms.

Messages are persistent (delivery mode 2), routed by topic, with `message_id`, `type`
(event type), `content_type: application/json` and the headers `key` and the message's
own headers. The exchange (a durable topic exchange) is declared when missing; without
`?exchange=` the default exchange routes by queue name = topic. Publishing is mandatory:
a message no queue is bound for is returned by the broker and counts as a failed
attempt (`?mandatory=false` drops it instead).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..store.base import OutboxMessage
from . import Sink, require
from .formats import OPTIONS

_OURS = {"exchange", "mandatory", "exchange_type"} | OPTIONS


class AmqpSink(Sink):
    batch_size = 50

    def __init__(self, url: str, timeout: float = 10.0, format: str | None = None) -> None:
        super().__init__(url, timeout, format)
        parts = urlsplit(url)
        query = [(k, v) for k, v in parse_qsl(parts.query) if k not in _OURS]
        self.target = urlunsplit(parts._replace(query=urlencode(query)))
        self.exchange = self.option("exchange", "") or ""
        self.exchange_type = self.option("exchange_type", "topic") or "topic"
        self.mandatory = (self.option("mandatory", "true") or "true").lower() not in ("0", "false", "no")
        self.connection: Any = None
        self.channel: Any = None

    def open(self) -> None:
        pika = require("pika", "amqp", "amqp")
        self.pika = pika
        try:
            params = pika.URLParameters(self.target)
            params.socket_timeout = self.timeout
            params.blocked_connection_timeout = self.timeout
            params.connection_attempts = 1
            self.connection = pika.BlockingConnection(params)
            self.channel = self.connection.channel()
            self.channel.confirm_delivery()
            if self.exchange:
                self.channel.exchange_declare(self.exchange, self.exchange_type, durable=True)
        except Exception as exc:
            self.close()
            raise self.unavailable(exc) from None

    def send(self, messages: Sequence[OutboxMessage]) -> list[str | None]:
        pika = self.pika
        results: list[str | None] = []
        for m in messages:
            encoded = self.encode(m)
            props = pika.BasicProperties(
                content_type=encoded.content_type,
                delivery_mode=2,
                message_id=m.message_id,
                type=str(m.headers.get("event-type", "")) or None,
                correlation_id=str(m.headers.get("correlation-id", "")) or None,
                headers={**encoded.headers, "key": m.key, "topic": m.topic},
            )
            try:
                self.channel.basic_publish(
                    self.exchange, m.topic, encoded.body, props, mandatory=self.mandatory
                )
                results.append(None)
            except pika.exceptions.UnroutableError:
                results.append(f"no queue is bound for routing key {m.topic!r} on exchange {self.exchange!r}")
                return results
            except pika.exceptions.NackError:
                results.append("the broker refused the message (nack)")
                return results
            except pika.exceptions.AMQPError as exc:
                if results:
                    return results
                raise self.unavailable(f"{type(exc).__name__}: {exc}") from None
        return results

    def close(self) -> None:
        try:
            if self.connection is not None and self.connection.is_open:
                self.connection.close()
        except Exception:
            pass
        self.connection = self.channel = None
