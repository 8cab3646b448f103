"""`redis://host:port/db?stream=NAME[&maxlen=N]`: XADD to a Redis stream.

Each entry has the fields `message_id`, `topic`, `key`, `headers` and `payload` (JSON).
Without `?stream=` each topic goes to the stream of the same name. `maxlen` trims the
stream approximately (`MAXLEN ~ N`). A batch goes in one pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson

from ..errors import UsageError
from ..store.base import OutboxMessage
from . import Sink, require
from .formats import OPTIONS

_OURS = {"stream", "maxlen"} | OPTIONS


class RedisSink(Sink):
    def __init__(self, url: str, timeout: float = 10.0, format: str | None = None) -> None:
        super().__init__(url, timeout, format)
        parts = urlsplit(url)
        query = [(k, v) for k, v in parse_qsl(parts.query) if k not in _OURS]
        self.target = urlunsplit(parts._replace(query=urlencode(query)))
        self.stream = self.option("stream")
        maxlen = self.option("maxlen")
        if maxlen is not None and not maxlen.isdigit():
            raise UsageError(f"redis sink: maxlen must be a number, got {maxlen!r}")
        self.maxlen = int(maxlen) if maxlen else None
        self.client: Any = None

    def open(self) -> None:
        redis = require("redis", "redis", "redis")
        self.errors = redis.exceptions
        try:
            self.client = redis.Redis.from_url(
                self.target, socket_timeout=self.timeout, socket_connect_timeout=self.timeout
            )
            self.client.ping()
        except redis.exceptions.RedisError as exc:
            raise self.unavailable(exc) from None

    def send(self, messages: Sequence[OutboxMessage]) -> list[str | None]:
        pipe = self.client.pipeline(transaction=False)
        for m in messages:
            encoded = self.encode(m)
            fields = {
                "message_id": m.message_id,
                "topic": m.topic,
                "key": m.key,
                "headers": orjson.dumps(encoded.headers),
                "payload": encoded.body,
            }
            pipe.xadd(self.stream or m.topic, fields, maxlen=self.maxlen, approximate=True)
        try:
            replies = pipe.execute(raise_on_error=False)
        except (self.errors.ConnectionError, self.errors.TimeoutError) as exc:
            raise self.unavailable(exc) from None
        return [f"redis refused: {r}" if isinstance(r, Exception) else None for r in replies]

    def close(self) -> None:
        if self.client is not None:
            try:
                self.client.close()
            except Exception:
                pass
            self.client = None
