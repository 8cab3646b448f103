"""`bullmq://host:port[/db]/QUEUE[?job=NAME&prefix=bull]`: one BullMQ job per message.

Jobs are added with the maintained `bullmq` package (`pip install 'cqrsctl[bullmq]'`), so
BullMQ workers in Node or Python consume them unchanged. The job id is the message id:
BullMQ adds nothing when a job with that id is still in the queue (waiting, active,
completed or failed and not yet removed), so a re-delivery is not a second job. The job
name is `?job=`, else the event type; the job data is the message in the sink's format
(the outbox payload by default, or e.g. `?format=nestjs`). A batch is added with one
`addBulk` (one round trip); it is delivered when Redis has answered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson

from ..errors import UsageError
from ..store.base import OutboxMessage
from . import Sink, require


class BullMQSink(Sink):
    def __init__(self, url: str, timeout: float = 10.0, format: str | None = None) -> None:
        super().__init__(url, timeout, format)
        parts = urlsplit(url)
        path = [unquote(p) for p in parts.path.split("/") if p]
        if not path or len(path) > 2 or (len(path) == 2 and not path[0].isdigit()):
            raise UsageError(f"bullmq sink {self.name}: give the queue as bullmq://host:port[/db]/QUEUE")
        self.queue_name = path[-1]
        self.redis_url = f"redis://{parts.netloc}/{path[0] if len(path) == 2 else 0}"
        self.job = self.option("job")
        self.prefix = self.option("prefix", "bull") or "bull"
        self.loop: asyncio.AbstractEventLoop | None = None
        self.queue: Any = None
        self.client: Any = None

    def _run(self, coro: Any, seconds: float | None = None) -> Any:
        assert self.loop is not None
        # BullMQ's own connection retries for minutes; every call here has our deadline.
        return self.loop.run_until_complete(
            asyncio.wait_for(coro, self.timeout if seconds is None else seconds)
        )

    def open(self) -> None:
        bullmq = require("bullmq", "bullmq", "bullmq")
        import redis.asyncio as aioredis

        self.errors = (aioredis.ConnectionError, aioredis.TimeoutError, OSError, asyncio.TimeoutError)
        self.loop = asyncio.new_event_loop()
        try:
            self.client = aioredis.Redis.from_url(
                self.redis_url,
                decode_responses=True,
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
                retry_on_timeout=False,
            )
            self._run(self.client.ping())
            self.queue = bullmq.Queue(self.queue_name, {"connection": self.client, "prefix": self.prefix})
        except self.errors as exc:
            self.close()
            raise self.unavailable(exc) from None

    async def _add(self, messages: Sequence[OutboxMessage]) -> None:
        jobs = []
        for m in messages:
            data = orjson.loads(self.encode(m).body)
            name = self.job or str(m.payload.get("event_type") or m.topic)
            jobs.append({"name": name, "data": data, "opts": {"jobId": m.message_id}})
        await self.queue.addBulk(jobs)

    def send(self, messages: Sequence[OutboxMessage]) -> list[str | None]:
        try:
            self._run(self._add(messages), self.time_left())
        except self.errors as exc:
            raise self.unavailable(exc) from None
        except Exception as exc:  # a Redis error reply (out of memory, wrong type …)
            # Jobs of the batch may have been added before it: the first counts as refused,
            # the rest is sent again later under the same job ids (so never twice).
            return [f"bullmq refused the batch: {type(exc).__name__}: {exc}"]
        return [None] * len(messages)

    def close(self) -> None:
        if self.loop is None:
            return
        try:
            if self.client is not None:
                self.loop.run_until_complete(asyncio.wait_for(self.client.aclose(), self.timeout))
        except Exception:
            pass
        self.client = self.queue = None
        try:
            self.loop.close()
        except RuntimeError:  # still running an abandoned send on its thread
            pass
        self.loop = None
