"""`stdout` and `file:///path.jsonl`: one JSON document per line.

Each line is `{"message_id", "topic", "key", "headers", "payload"}` (with `?format=` other than
`cqrsctl`: the formatted message alone, e.g. one EventBridge entry). The file sink
appends and fsyncs once per batch, so a message is marked delivered only after it is
on disk; a crash between the two re-appends that batch (consumers dedupe on message_id).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import IO, Any

import orjson

from ..errors import UsageError
from ..store.base import OutboxMessage
from . import Sink


def wire_form(m: OutboxMessage) -> dict[str, Any]:
    """The message as the stdout and file sinks write it by default (and `outbox peek` shows it)."""
    return {
        "message_id": m.message_id,
        "topic": m.topic,
        "key": m.key,
        "headers": m.headers,
        "payload": m.payload,
    }


def _line(sink: Sink, m: OutboxMessage) -> bytes:
    if sink.format != "cqrsctl":  # the formatted message alone: a NestJS value, a CloudEvent, …
        return sink.encode(m).body
    # wire_form, with the payload's JSON as the store has it rather than encoded again.
    line = {"message_id": m.message_id, "topic": m.topic, "key": m.key, "headers": m.headers}
    line["payload"] = orjson.Fragment(m.body())
    return orjson.dumps(line)


class StdoutSink(Sink):
    keeps_deadline = True  # no peer: a local pipe

    def send(self, messages: Sequence[OutboxMessage]) -> list[str | None]:
        out = sys.stdout.buffer
        try:
            out.write(b"".join(_line(self, m) + b"\n" for m in messages))
            out.flush()
        except OSError as exc:  # a closed pipe: nothing more can be delivered
            raise self.unavailable(exc) from None
        return [None] * len(messages)


class FileSink(Sink):
    keeps_deadline = True  # no peer: a local file

    def __init__(self, url: str, timeout: float = 10.0, format: str | None = None) -> None:
        super().__init__(url, timeout, format)
        path = url.split("?", 1)[0][len("file://") :]
        if not path:
            raise UsageError(f"file sink has no path: {url} (use file:///abs/path.jsonl)")
        self.path = path
        self.file: IO[bytes] | None = None

    def open(self) -> None:
        try:
            self.file = open(self.path, "ab")  # noqa: SIM115 - held for the whole drain
            # A run killed mid-write leaves a torn last line; start ours on a fresh one.
            if self.file.tell() > 0:
                with open(self.path, "rb") as f:
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        self.file.write(b"\n")
        except OSError as exc:
            raise self.unavailable(exc) from None

    def send(self, messages: Sequence[OutboxMessage]) -> list[str | None]:
        if self.file is None:
            self.open()
        assert self.file is not None
        try:
            self.file.write(b"".join(_line(self, m) + b"\n" for m in messages))
            self.file.flush()
            os.fsync(self.file.fileno())
        except OSError as exc:
            raise self.unavailable(exc) from None
        return [None] * len(messages)

    def close(self) -> None:
        if self.file is not None:
            try:
                self.file.close()
            except OSError:
                pass
            self.file = None
