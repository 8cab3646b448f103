"""`kafka://host:port[,host:port…][?topic=NAME]`: idempotent produce, confirmed by delivery reports.

The producer is idempotent (`enable.idempotence=true`, `acks=all`): its own retries never
duplicate or reorder a partition. The record key is the message key (one key, one
partition, so order per key holds), the value the JSON payload, and the headers are
`message_id`, `topic` (the outbox topic) and the message's own headers. The Kafka topic is
the message's topic, or `?topic=` for all of them; Kafka allows only ASCII letters, digits,
`.`, `_` and `-` in topic names, so any other character becomes `_`. The topic must exist
or the broker must create topics on first use.

A batch is produced, then flushed: a message is delivered when its delivery report says
so. A report with a broker error refuses that message; no report within the send timeout
(or a report of a lost connection) means the broker is unavailable.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from ..errors import UsageError
from ..store.base import OutboxMessage
from . import Sink, require

# Codes (librdkafka's local ones) that say the broker was not reached, not that it
# refused the message.
_UNREACHED = {
    "_MSG_TIMED_OUT",
    "_TRANSPORT",
    "_ALL_BROKERS_DOWN",
    "_TIMED_OUT",
    "_PURGE_QUEUE",
    "_PURGE_INFLIGHT",
    "_FATAL",
    "_DESTROY",
}


def kafka_topic(topic: str) -> str:
    """`topic` with every character Kafka does not allow in topic names replaced by `_`."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", topic)


class KafkaSink(Sink):
    binary_prefix = "ce_"

    def __init__(self, url: str, timeout: float = 10.0, format: str | None = None) -> None:
        super().__init__(url, timeout, format)
        parts = urlsplit(url)
        if "@" in parts.netloc:
            raise UsageError(f"kafka sink {self.name}: credentials in the URL are not supported")
        if not parts.netloc:
            raise UsageError(f"kafka sink has no broker address: {self.name} (use kafka://host:port)")
        self.servers = parts.netloc
        self.topic = self.option("topic")
        if self.topic is not None and kafka_topic(self.topic) != self.topic:
            raise UsageError(
                f"kafka sink: topic {self.topic!r} is not a Kafka topic name (letters, digits, '.', '_', '-')"
            )
        self.producer: Any = None
        self.last_error: str | None = None

    def _on_error(self, err: Any) -> None:
        self.last_error = err.str()

    def _reason(self, what: str) -> str:
        # The connection error (refused, no route, …) arrives separately through error_cb.
        return f"{what} ({self.last_error})" if self.last_error else what

    def open(self) -> None:
        ck = require("confluent_kafka", "kafka", "kafka")
        self.KafkaException = ck.KafkaException
        ms = max(int(self.timeout * 1000), 1000)
        self.producer = ck.Producer(
            {
                "bootstrap.servers": self.servers,
                "enable.idempotence": True,
                "acks": "all",
                "message.timeout.ms": ms,
                "socket.connection.setup.timeout.ms": ms,
                "error_cb": self._on_error,
                "log_level": 0,  # errors reach us through error_cb and delivery reports
            }
        )
        try:
            self.producer.list_topics(timeout=self.timeout)
        except ck.KafkaException as exc:
            self.producer.poll(0)
            self.close()
            raise self.unavailable(self._reason(exc.args[0].str())) from None

    def send(self, messages: Sequence[OutboxMessage]) -> list[str | None]:
        results: list[str | None] = []
        unreached: list[str] = []

        def on_delivery(i: int, err: Any, msg: Any) -> None:
            if err is None:
                return
            if err.name() in _UNREACHED:
                unreached.append(err.str())
            else:
                results[i] = f"kafka refused the message: {err.name()}: {err.str()}"

        self.last_error = None
        for i, m in enumerate(messages):
            encoded = self.encode(m)
            headers = [(k, v.encode()) for k, v in encoded.headers.items()]
            headers += [("message_id", m.message_id.encode()), ("topic", m.topic.encode())]
            if self.format == "cloudevents-binary":
                headers.append(("content-type", encoded.content_type.encode()))
            results.append(None)
            try:
                self.producer.produce(
                    self.topic or kafka_topic(m.topic),
                    encoded.body,
                    m.key.encode(),
                    headers=headers,
                    on_delivery=partial(on_delivery, i),
                )
            except BufferError:  # the local queue is full: the rest waits for the next batch
                results.pop()
                break
            except self.KafkaException as exc:
                # Refused before it left (too large, bad topic): later messages stay unsent.
                results[i] = f"kafka refused the message: {exc.args[0].str()}"
                break
        # message.timeout.ms bounds every report; the margin covers the last round trip.
        if self.producer.flush(self.timeout + 5) > 0:
            self.producer.purge()
            self.producer.poll(0)
            unreached.append(f"no delivery report within {self.timeout:g}s")
        if unreached:
            raise self.unavailable(self._reason(unreached[0]))
        return results

    def close(self) -> None:
        if self.producer is not None:
            try:
                self.producer.purge()
                self.producer.flush(0)
            except Exception:
                pass
            self.producer = None
