"""`http(s)://host/path`: one POST of the JSON payload per message; any 2xx is delivered.

Headers: `Content-Type: application/json`, `X-Message-Id` (also `Idempotency-Key`),
`X-Topic`, `X-Key`, `X-Event-Type`, and with a secret `X-Signature: sha256=<hex HMAC-SHA256
of the body>`. The secret comes from `?secret=` in the sink URL or the environment variable
`CQRSCTL_SINK_SECRET`; `?secret=` and `?header=` (signature header name) are not sent on.
A non-2xx answer or a read timeout is a failed attempt; a refused connection is the
sink being unavailable.

Each request has a hard deadline (the send timeout, or the drain's deadline when sooner):
every socket read and write waits at most until then, so a receiver that trickles its
answer a byte at a time cannot hold a request longer than a silent one.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..errors import UsageError
from ..store.base import OutboxMessage
from . import Sink, require
from .formats import OPTIONS

_OURS = {"secret", "header", "concurrency"} | OPTIONS


def signature(secret: str, body: bytes) -> str:
    """The `X-Signature` value a receiver recomputes to check a message came from us."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _deadline_backend(sink: HttpSink) -> Any:
    """An httpcore network backend whose every socket wait ends by `sink.deadline`.

    httpx's timeouts are per read: a peer sending one byte a second never trips them."""
    httpcore = require("httpcore", "http", "http")

    def room(timeout: float | None) -> float:
        left = sink.time_left()
        if left <= 0:
            raise httpcore.ReadTimeout(f"no answer within {sink.timeout:g}s")
        return left if timeout is None else min(timeout, left)

    stream_base: Any = httpcore.NetworkStream
    backend_base: Any = httpcore.SyncBackend

    class Stream(stream_base):  # type: ignore[misc]
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
            return self.inner.read(max_bytes, room(timeout))  # type: ignore[no-any-return]

        def write(self, buffer: bytes, timeout: float | None = None) -> None:
            self.inner.write(buffer, room(timeout))

        def close(self) -> None:
            self.inner.close()

        def start_tls(
            self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
        ) -> Any:
            return Stream(self.inner.start_tls(ssl_context, server_hostname, room(timeout)))

        def get_extra_info(self, info: str) -> Any:
            return self.inner.get_extra_info(info)

    class Backend(backend_base):  # type: ignore[misc]
        def connect_tcp(self, host: str, port: int, timeout: float | None = None, **kw: Any) -> Any:
            return Stream(super().connect_tcp(host, port, room(timeout), **kw))

    return Backend()


class HttpSink(Sink):
    binary_prefix = "ce-"
    batch_size = 1  # one request per send: the drain checks its lease and a stop before each

    def __init__(self, url: str, timeout: float = 10.0, format: str | None = None) -> None:
        super().__init__(url, timeout, format)
        parts = urlsplit(url)
        query = [(k, v) for k, v in parse_qsl(parts.query) if k not in _OURS]
        self.target = urlunsplit(parts._replace(query=urlencode(query)))
        self.secret = self.option("secret") or os.environ.get("CQRSCTL_SINK_SECRET")
        self.header = self.option("header", "X-Signature") or "X-Signature"
        concurrency = self.option("concurrency", "1") or "1"
        if not concurrency.isdigit() or not 1 <= int(concurrency) <= 64:
            raise UsageError(f"concurrency must be a whole number from 1 to 64, not {concurrency!r}")
        # ?concurrency=N: up to N requests at once, each for a different key.
        self.batch_size = int(concurrency)
        self.parallel = self.batch_size > 1
        self.client: Any = None

    def open(self) -> None:
        httpx = require("httpx", "http", "http")
        self.httpx = httpx
        transport = httpx.HTTPTransport(
            limits=httpx.Limits(max_keepalive_connections=max(20, self.batch_size or 1))
        )
        pool = getattr(transport, "_pool", None)
        # Without the clamp (another httpx), the drain's guarded thread keeps the deadline.
        self.keeps_deadline = hasattr(pool, "_network_backend")
        if self.keeps_deadline:
            pool._network_backend = _deadline_backend(self)  # type: ignore[union-attr]
        self.client = httpx.Client(timeout=self.timeout, follow_redirects=False, transport=transport)

    def _post(self, m: OutboxMessage) -> str | None:
        """POST one message: None when delivered, else why not; raises _Unreached when the
        connection itself failed."""
        encoded = self.encode(m)
        body = encoded.body
        headers = {
            # The cqrsctl format's own headers travel as X-* (below), as they always have.
            **({} if self.format == "cqrsctl" else encoded.headers),
            "Content-Type": encoded.content_type,
            "X-Message-Id": m.message_id,
            "Idempotency-Key": m.message_id,
            "X-Topic": m.topic,
            "X-Key": m.key,
            "X-Event-Type": str(m.headers.get("event-type", "")),
        }
        if self.secret:
            headers[self.header] = signature(self.secret, body)
        started = time.monotonic()
        try:
            response = self.client.post(self.target, content=body, headers=headers, timeout=self.time_left())
        except (self.httpx.ConnectError, self.httpx.ConnectTimeout) as exc:
            raise _Unreached(exc) from None
        except self.httpx.TimeoutException:
            return f"no complete answer from {self.name} within {time.monotonic() - started:.1f}s"
        except self.httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        if 200 <= response.status_code < 300:
            return None
        text = " ".join(response.text.split())[:200]
        return f"HTTP {response.status_code} from {self.name}: {text}".rstrip(": ")

    def send(self, messages: Sequence[OutboxMessage]) -> list[str | None]:
        if len(messages) > 1 and self.parallel:
            return self._send_at_once(messages)
        results: list[str | None] = []
        for m in messages:
            try:
                results.append(self._post(m))
            except _Unreached as exc:
                if results:  # what went out is delivered; the rest waits for the sink
                    return results
                raise self.unavailable(exc.args[0]) from None
            if results[-1] is not None:
                return results  # later messages may share its key: they wait
        return results

    def _send_at_once(self, messages: Sequence[OutboxMessage]) -> list[str | None]:
        # Daemon threads, not a pool: a second signal must not wait for requests at exit.
        out: list[Any] = [_Unreached("no answer")] * len(messages)

        def post(i: int, m: OutboxMessage) -> None:
            try:
                out[i] = self._post(m)
            except _Unreached as exc:
                out[i] = exc

        threads = [threading.Thread(target=post, args=(i, m), daemon=True) for i, m in enumerate(messages)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(self.time_left() + 1)  # each request ends by the deadline already
        unreached = [i for i, r in enumerate(out) if isinstance(r, _Unreached)]
        if len(unreached) == len(messages):
            raise self.unavailable(out[0].args[0])
        # The contract is a prefix: stop at the first message that did not go out (those
        # after it that did are sent again later; receivers dedupe on the message id).
        return list(out[: unreached[0]] if unreached else out)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


class _Unreached(Exception):
    """The connection to the receiver failed: nothing was delivered."""
