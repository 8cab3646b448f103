"""Message formats: the shape a sink gives each outbox message, so existing consumers read it.

- `cqrsctl`: the outbox payload as stored (see docs/outbox.md), headers `event-type`,
  `correlation-id`, `causation-id`.
- `nestjs`: the value of a Kafka event store built the common NestJS way, `{"eventId",
  "eventType", "aggregateId", "aggregateType", "aggregateVersion", "timestamp",
  "correlationId", "causationId", "metadata", "data"}`, headers `eventType`,
  `aggregateVersion`, `correlationId`.
- `cloudevents`: a CloudEvents 1.0 event in structured mode (`application/cloudevents+json`);
  `cloudevents-binary` puts the attributes in headers (`ce-*` over HTTP, `ce_*` on Kafka)
  and the data in the body, on the sinks that have headers for it.
- `eventbridge`: one EventBridge PutEvents entry, `{"Source", "DetailType", "Detail",
  "EventBusName", "Time"}`, whose Detail is the `nestjs` value as JSON text.

The format comes from the sink URL (`?format=`), else the app's `outbox_format`, else
`cqrsctl`. `?source=` sets the CloudEvents `source` / EventBridge `Source` (default the
outbox topic), `?bus=` the EventBridge bus (default `default`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson

from ..errors import UsageError
from ..store.base import OutboxMessage

FORMATS = ("cqrsctl", "nestjs", "cloudevents", "cloudevents-binary", "eventbridge")
#: URL parameters the formats read (sinks that pass their query on leave these out).
OPTIONS = frozenset({"format", "source", "bus"})

JSON = "application/json"
# Kept by name in the outbox payload; everything else of the event's metadata is under "metadata".
_TOP_LEVEL = ("correlation_id", "causation_id")


class Encoded(NamedTuple):
    """One message as a sink sends it: body bytes, headers (where the sink has them), content type.
    A tuple: one is built per message sent, and a frozen dataclass costs three times as much."""

    body: bytes
    headers: dict[str, str]
    content_type: str


def check_format(name: str) -> str:
    if name not in FORMATS:
        raise UsageError(f"unknown message format {name!r}: use one of {', '.join(FORMATS)}")
    return name


def split_stream(stream_id: str) -> tuple[str, str]:
    """(aggregate type, aggregate id): `Account-A-1` → (`Account`, `A-1`)."""
    kind, _, ident = stream_id.partition("-")
    return kind, ident or kind


def nestjs_value(p: dict[str, Any]) -> dict[str, Any]:
    kind, ident = split_stream(str(p["stream_id"]))
    return {
        "eventId": p["event_id"],
        "eventType": p["event_type"],
        "aggregateId": ident,
        "aggregateType": kind,
        "aggregateVersion": p["stream_version"],
        "timestamp": p["recorded_at"],
        "correlationId": p.get("correlation_id"),
        "causationId": p.get("causation_id"),
        "metadata": p.get("metadata") or {},
        "data": p["data"],
    }


def cloudevent(m: OutboxMessage, source: str) -> dict[str, Any]:
    """The CloudEvents 1.0 attributes and data of `m` (absent optional attributes left out)."""
    p = m.payload
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": m.message_id,
        "source": source,
        "type": p["event_type"],
        "subject": p["stream_id"],
        "time": p["recorded_at"],
        "datacontenttype": JSON,
        # Extensions (lower-case letters and digits only, as the spec requires).
        "partitionkey": m.key,
        "streamversion": p["stream_version"],
    }
    for name in _TOP_LEVEL:
        if p.get(name):
            event[name.replace("_", "")] = str(p[name])
    event["data"] = p["data"]
    return event


class Formatter:
    """Encodes messages in one format for one sink. `binary_prefix` is the sink's header
    prefix for CloudEvents binary mode (`ce-`, `ce_`), None where it has no headers for it."""

    def __init__(self, name: str, options: dict[str, str], sink: str, binary_prefix: str | None) -> None:
        self.name = check_format(name)
        if name == "cloudevents-binary" and binary_prefix is None:
            raise UsageError(
                f"sink {sink}: format cloudevents-binary needs a sink with headers (http, kafka); use cloudevents"
            )
        self.prefix = binary_prefix or ""
        self.source = options.get("source")
        self.bus = options.get("bus", "default")

    def encode(self, m: OutboxMessage) -> Encoded:
        if self.name == "cqrsctl":
            return Encoded(m.body(), {k: str(v) for k, v in m.headers.items()}, JSON)
        p = m.payload
        if self.name == "nestjs":
            headers = {"eventType": str(p["event_type"]), "aggregateVersion": str(p["stream_version"])}
            if p.get("correlation_id"):
                headers["correlationId"] = str(p["correlation_id"])
            return Encoded(orjson.dumps(nestjs_value(p)), headers, JSON)
        if self.name == "eventbridge":
            entry = {
                "Source": self.source or m.topic,
                "DetailType": p["event_type"],
                "Detail": orjson.dumps(nestjs_value(p)).decode(),
                "EventBusName": self.bus,
                "Time": p["recorded_at"],
            }
            return Encoded(orjson.dumps(entry), {}, JSON)
        event = cloudevent(m, self.source or m.topic)
        if self.name == "cloudevents":
            return Encoded(orjson.dumps(event), {}, "application/cloudevents+json")
        data = event.pop("data")
        event.pop("datacontenttype")  # binary mode: the content type of the body says it
        headers = {self.prefix + k: str(v) for k, v in event.items()}
        return Encoded(orjson.dumps(data), headers, JSON)
