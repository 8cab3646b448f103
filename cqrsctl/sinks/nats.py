"""`nats://host:port[?stream=NAME]`: JetStream publish, each message acknowledged by the server.

The subject is the topic. Every message carries the header `Nats-Msg-Id` = message id, so
JetStream drops a re-delivery inside the stream's duplicate window (2 minutes by default).
With `?stream=NAME` the stream is created when missing and its subjects grow to cover each
topic published; without it, an existing stream must already capture the topics.
A batch is published pipelined and then all acks are awaited: each message's reply
subject is a token under one inbox this sink subscribes to once, the batch waits on one
future that the last ack resolves, and an ack is read with orjson (the client's own
`publish_async` costs about twice the CPU per message).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from ..store.base import OutboxMessage
from . import Sink, require


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard match: `*` is one token, a final `>` one or more."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


class NatsSink(Sink):
    keeps_deadline = True  # every wait is an asyncio.wait_for on the sink's own loop

    def __init__(self, url: str, timeout: float = 10.0, format: str | None = None) -> None:
        super().__init__(url, timeout, format)
        parts = urlsplit(url)
        self.server = urlunsplit(parts._replace(query="", fragment=""))
        self.stream = self.option("stream")
        self.subjects: list[str] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.nc: Any = None
        self.js: Any = None
        self.inbox = ""  # acks come to inbox.<n>, for the batch's acks[inbox.<n>]
        self.acks: dict[str, Any] = {}  # the batch in flight's reply subjects, in order: ack or None
        self.missing = 0
        self.all_in: asyncio.Future[None] | None = None  # done when the last ack came
        self.sent = 0

    def _run(self, coro: Any) -> Any:
        assert self.loop is not None
        return self.loop.run_until_complete(coro)

    def open(self) -> None:
        nats = require("nats", "nats", "nats")
        self.errors = require("nats.errors", "nats", "nats")
        self.js_errors = require("nats.js.errors", "nats", "nats")
        self.loop = asyncio.new_event_loop()

        async def quiet(exc: Exception) -> None:  # the client logs to stderr otherwise
            return None

        try:
            # max_reconnect_attempts=1: with 0 the client retries an unreachable server for ever.
            connect = nats.connect(
                self.server,
                connect_timeout=self.timeout,
                allow_reconnect=False,
                max_reconnect_attempts=1,
                error_cb=quiet,
            )
            self.nc = self._run(asyncio.wait_for(connect, self.timeout * 2))
            self.js = self.nc.jetstream(timeout=self.timeout)
            if self.stream:
                self.subjects = self._run(self._ensure_stream())
            self._run(self._listen())
        except Exception as exc:
            self.close()
            raise self.unavailable(exc) from None

    async def _listen(self) -> None:
        self.inbox = self.nc.new_inbox()
        self.acks = {}

        async def ack(msg: Any) -> None:
            # A late ack of an abandoned batch has a reply subject no longer waited for.
            if self.acks.get(msg.subject, msg) is not None:
                return
            self.acks[msg.subject] = msg
            self.missing -= 1
            if not self.missing and self.all_in is not None and not self.all_in.done():
                self.all_in.set_result(None)

        await self.nc.subscribe(self.inbox + ".*", cb=ack)

    async def _ensure_stream(self) -> list[str]:
        try:
            info = await self.js.stream_info(self.stream)
            return list(info.config.subjects or [])
        except self.js_errors.NotFoundError:
            await self.js.add_stream(name=self.stream, subjects=[])
            return []

    async def _cover(self, topics: set[str]) -> None:
        missing = sorted(t for t in topics if not any(subject_matches(p, t) for p in self.subjects or []))
        if not missing:
            return
        info = await self.js.stream_info(self.stream)
        config = info.config
        config.subjects = list(config.subjects or []) + missing
        await self.js.update_stream(config)
        self.subjects = config.subjects

    async def _publish(self, messages: Sequence[OutboxMessage]) -> list[str | None]:
        if self.stream:
            await self._cover({m.topic for m in messages})
        # One future for the batch, resolved by the last ack, rather than one per message.
        acks: dict[str, Any] = {}
        self.acks, self.missing = acks, len(messages)
        self.all_in = asyncio.get_running_loop().create_future()
        publish, inbox = self.nc.publish, self.inbox
        try:
            for m in messages:
                encoded = self.encode(m)
                headers = {**encoded.headers, "Nats-Msg-Id": m.message_id, "Key": m.key}
                self.sent += 1
                reply = f"{inbox}.{self.sent}"
                acks[reply] = None
                await publish(m.topic, encoded.body, reply=reply, headers=headers)
            if messages:
                await asyncio.wait_for(self.all_in, self.time_left())
        finally:
            self.acks, self.all_in = {}, None  # one batch at a time: nothing else waits
        return [self._refusal(a) for a in acks.values()]

    @staticmethod
    def _refusal(ack: Any) -> str | None:
        if not ack.data:  # a status message: 503 = no stream captures the subject
            status = (ack.headers or {}).get("Status", "")
            return f"JetStream did not accept the message: no stream answered (status {status})".rstrip()
        answer = orjson.loads(ack.data)
        if "error" in answer:
            error = answer["error"]
            return f"JetStream did not accept the message: {error.get('description', error)}"
        return None

    def send(self, messages: Sequence[OutboxMessage]) -> list[str | None]:
        try:
            return self._run(self._publish(messages))  # type: ignore[no-any-return]
        except TimeoutError as exc:
            raise self.unavailable(
                f"no acknowledgement within {self.timeout:g}s ({type(exc).__name__})"
            ) from None
        except (self.errors.ConnectionClosedError, self.errors.NoServersError, OSError) as exc:
            raise self.unavailable(exc) from None
        except self.js_errors.APIError as exc:
            raise self.unavailable(exc) from None

    def close(self) -> None:
        if self.loop is None:
            return
        try:
            if self.nc is not None and not self.nc.is_closed:
                self._run(self.nc.close())
        except Exception:
            pass
        finally:
            self.loop.close()
            self.loop = None
            self.nc = None
