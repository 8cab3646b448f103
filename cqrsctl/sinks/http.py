"""`http(s)://host/path`: one POST of the JSON payload per message; any 2xx is delivered.

Headers: `Content-Type: application/json`, `X-Message-Id` (also `Idempotency-Key`),
`X-Topic`, `X-Key`, `X-Event-Type`, and with a secret `X-Signature: sha256=<hex HMAC-SHA256
of the body>`. The secret comes from `?secret=` in the sink URL or the environment variable
`CQRSCTL_SINK_SECRET`; `?secret=` and `?header=` (signature header name) are not sent on.
A non-2xx answer or a read timeout is a failed attempt; a refused connection is the
sink being unavailable.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..store.base import OutboxMessage
from . import Sink, require

_OURS = {"secret", "header"}


def signature(secret: str, body: bytes) -> str:
    """The `X-Signature` value a receiver recomputes to check a message came from us."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class HttpSink(Sink):
    batch_size = 20  # marks delivered every 20 requests; a stop waits for at most that many

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        super().__init__(url, timeout)
        parts = urlsplit(url)
        query = [(k, v) for k, v in parse_qsl(parts.query) if k not in _OURS]
        self.target = urlunsplit(parts._replace(query=urlencode(query)))
        self.secret = self.option("secret") or os.environ.get("CQRSCTL_SINK_SECRET")
        self.header = self.option("header", "X-Signature") or "X-Signature"
        if self.option("secret"):  # never print it
            self.name = self.name.replace(self.option("secret") or "", "***")
        self.client: Any = None

    def open(self) -> None:
        httpx = require("httpx", "http", "http")
        self.httpx = httpx
        self.client = httpx.Client(timeout=self.timeout, follow_redirects=False)

    def send(self, messages: Sequence[OutboxMessage]) -> list[str | None]:
        results: list[str | None] = []
        for m in messages:
            body = m.body()
            headers = {
                "Content-Type": "application/json",
                "X-Message-Id": m.message_id,
                "Idempotency-Key": m.message_id,
                "X-Topic": m.topic,
                "X-Key": m.key,
                "X-Event-Type": str(m.headers.get("event-type", "")),
            }
            if self.secret:
                headers[self.header] = signature(self.secret, body)
            try:
                response = self.client.post(self.target, content=body, headers=headers)
            except (self.httpx.ConnectError, self.httpx.ConnectTimeout) as exc:
                if results:  # what went out is delivered; the rest waits for the sink
                    return results
                raise self.unavailable(exc) from None
            except self.httpx.TimeoutException:
                results.append(f"no answer from {self.name} within {self.timeout:g}s")
                return results
            except self.httpx.HTTPError as exc:
                results.append(f"{type(exc).__name__}: {exc}")
                return results
            if 200 <= response.status_code < 300:
                results.append(None)
            else:
                text = " ".join(response.text.split())[:200]
                results.append(f"HTTP {response.status_code} from {self.name}: {text}".rstrip(": "))
                return results  # later messages may share its key: they wait
        return results

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
