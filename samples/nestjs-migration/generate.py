"""Write the history a NestJS service would leave behind, to try `cqrsctl import` on.

    python generate.py kafka 127.0.0.1:9092          # topic bank.account.events, NestJS values
    python generate.py dynamodb export.json          # the same accounts as a DynamoDB export

The Kafka history has the flaws such topics often have: account A-2's second event was
delivered twice (a producer retry), and account A-3's second event is missing (a gap).
The DynamoDB export is complete, in the scrambled order DynamoDB exports in, with a
snapshot item that is not an event. Ids are fixed, so running it twice writes the same
history (Kafka then holds each record twice: import drops the duplicates).
"""

from __future__ import annotations

import argparse
import random
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson

NAMESPACE = uuid.UUID("6f1c1d2e-5b0a-4b8e-9f3e-2d6c7a1b0e42")


def history(accounts: int = 3, deposits: int = 4, prefix: str = "bank") -> list[dict[str, Any]]:
    """NestJS event-store values, in the order the service wrote them (complete, no flaws)."""
    start = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
    values: list[dict[str, Any]] = []
    versions: dict[str, int] = {}

    def event(account: str, event_type: str, data: dict[str, Any], cause: str | None) -> str:
        versions[account] = versions.get(account, 0) + 1
        event_id = str(uuid.uuid5(NAMESPACE, f"{prefix}/{account}/{versions[account]}"))
        values.append(
            {
                "eventId": event_id,
                "eventType": event_type,
                "aggregateId": account,
                "aggregateType": "Account",
                "aggregateVersion": versions[account],
                "timestamp": (start + timedelta(minutes=len(values))).isoformat().replace("+00:00", "Z"),
                "correlationId": str(uuid.uuid5(NAMESPACE, f"{prefix}/{account}/request")),
                "causationId": cause,
                "metadata": {"userId": f"user-{account}", "source": "accounts-service"},
                "data": data,
            }
        )
        return event_id

    last = {}
    for a in range(1, accounts + 1):
        last[f"A-{a}"] = event(f"A-{a}", "AccountOpened", {"owner": f"Owner {a}"}, None)
    for d in range(deposits):
        account = f"A-{d % accounts + 1}"
        amount = str(Decimal(10 * (d + 1)).quantize(Decimal("0.01")))
        last[account] = event(account, "MoneyDeposited", {"amount": amount}, last[account])
    last["A-1"] = event("A-1", "MoneyWithdrawn", {"amount": "5.00"}, last["A-1"])
    return values


def with_flaws(values: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The history as the Kafka topic holds it: one record delivered twice, one missing."""
    out = []
    for v in values:
        if (v["aggregateId"], v["aggregateVersion"]) == ("A-3", 2):
            continue  # lost: A-3 jumps from version 1 to 3
        out.append(v)
        if (v["aggregateId"], v["aggregateVersion"]) == ("A-2", 2):
            out.append(v)  # a producer retry: the same event twice
    return out


def kafka_records(
    values: list[dict[str, Any]], prefix: str = "bank"
) -> list[tuple[str, bytes, bytes, list[tuple[str, bytes]]]]:
    """(topic, key, value, headers) per record, as the NestJS service produced them."""
    out = []
    for v in values:
        topic = f"{prefix}.{v['aggregateType'].lower()}.events"
        headers = [
            ("eventType", v["eventType"].encode()),
            ("aggregateVersion", str(v["aggregateVersion"]).encode()),
            ("correlationId", v["correlationId"].encode()),
        ]
        out.append((topic, v["aggregateId"].encode(), orjson.dumps(v), headers))
    return out


def _attr(value: Any) -> dict[str, Any]:
    """A plain value as DynamoDB JSON."""
    if value is None:
        return {"NULL": True}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int | float):
        return {"N": str(value)}
    if isinstance(value, dict):
        return {"M": {k: _attr(v) for k, v in value.items()}}
    if isinstance(value, list):
        return {"L": [_attr(v) for v in value]}
    return {"S": str(value)}


def dynamodb_lines(values: list[dict[str, Any]], seed: int = 7) -> list[bytes]:
    """A DynamoDB export of the event table: one `{"Item": …}` per line, in no particular order."""
    items = []
    for v in values:
        item = {
            "PK": f"{v['aggregateType'].upper()}#{v['aggregateId']}",
            "SK": f"EVENT#{v['timestamp']}#{v['eventId']}",
            "aggregateType": v["aggregateType"],
            "version": v["aggregateVersion"],
            "eventType": v["eventType"],
            "data": v["data"],
            "metadata": v["metadata"],
            "correlationId": v["correlationId"],
            "causationId": v["causationId"],
        }
        items.append({"Item": {k: _attr(x) for k, x in item.items()}})
    snapshot = {"PK": "ACCOUNT#A-1", "SK": "SNAPSHOT#3", "state": {"balance": 10}}
    items.append({"Item": {k: _attr(x) for k, x in snapshot.items()}})
    random.Random(seed).shuffle(items)
    return [orjson.dumps(i) for i in items]


def produce(
    bootstrap: str, records: list[tuple[str, bytes, bytes, list[tuple[str, bytes]]]], partitions: int = 3
) -> None:
    from confluent_kafka import KafkaException, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    for future in admin.create_topics([NewTopic(t, partitions) for t in {r[0] for r in records}]).values():
        try:
            future.result(15)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
        except TimeoutError:
            raise SystemExit(f"no Kafka broker answered at {bootstrap} within 15 s") from None
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for topic, key, value, headers in records:
        producer.produce(topic, value, key, headers=headers)
    if producer.flush(30):
        raise SystemExit("the broker did not acknowledge every record within 30 s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="target", required=True)
    k = sub.add_parser("kafka", help="produce the history (with a duplicate and a gap) to a Kafka broker")
    k.add_argument("bootstrap", help="host:port of the broker")
    k.add_argument("--prefix", default="bank", help="topic prefix (topics are PREFIX.account.events)")
    d = sub.add_parser("dynamodb", help="write the history as a DynamoDB export file")
    d.add_argument("out", help="the file to write")
    for p in (k, d):
        p.add_argument("--accounts", type=int, default=3)
        p.add_argument("--deposits", type=int, default=6)
    args = parser.parse_args()
    if args.target == "kafka":
        records = kafka_records(with_flaws(history(args.accounts, args.deposits, args.prefix)), args.prefix)
        produce(args.bootstrap, records)
        print(f"produced {len(records)} records to {args.prefix}.account.events")
    else:
        lines = dynamodb_lines(history(args.accounts, args.deposits))
        with open(args.out, "wb") as f:
            f.write(b"".join(line + b"\n" for line in lines))
        print(f"wrote {len(lines)} items to {args.out}")


if __name__ == "__main__":
    main()
