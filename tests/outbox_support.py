"""Shared by the outbox and sink tests: a small publishing app, an HTTP receiver, readers."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson

from cqrsctl.app import Aggregate, App, Command, Event
from cqrsctl.services.dispatch import Dispatcher
from cqrsctl.store import Store

app = App("outbox-test")


class Opened(Event):
    owner: str


class Deposited(Event):
    amount: int


class Noted(Event):
    text: str


class Acct(Aggregate, category="Acct"):
    balance: int = 0

    def when_Opened(self, e: Opened) -> None:
        pass

    def when_Deposited(self, e: Deposited) -> None:
        self.balance += e.amount

    def when_Noted(self, e: Noted) -> None:
        pass


@app.command(aggregate=Acct, stream=lambda c: c.id)
class Open(Command):
    id: str
    owner: str

    def handle(self, acct: Acct) -> list[Event]:
        return [Opened(owner=self.owner)]


@app.command(aggregate=Acct, stream=lambda c: c.id)
class Deposit(Command):
    id: str
    amount: int

    def handle(self, acct: Acct) -> list[Event]:
        return [Deposited(amount=self.amount)]


@app.command(aggregate=Acct, stream=lambda c: c.id)
class DepositTwice(Command):
    id: str
    amount: int

    def handle(self, acct: Acct) -> list[Event]:
        return [Deposited(amount=self.amount), Deposited(amount=self.amount)]


@app.command(aggregate=Acct, stream=lambda c: c.id)
class Note(Command):
    id: str
    text: str

    def handle(self, acct: Acct) -> list[Event]:
        return [Noted(text=self.text)]


# Opened and Deposited are published (default topic Acct.events, key = stream id); Noted is not.
app.publish(Opened, Deposited)


def app_with_topic(topic: str) -> App:
    """The same commands, publishing Opened and Deposited on `topic` (brokers need unique names per test)."""
    other = App(f"outbox-test-{topic}")
    for spec in app.commands.values():
        other.command(aggregate=spec.aggregate, stream=lambda c: c.id)(spec.cls)
    other.publish(Opened, Deposited, topic=topic)
    return other


def fill(store: Store, accounts: int, deposits: int, using: App = app) -> int:
    """Open `accounts` accounts and make `deposits` deposits spread over them; returns messages."""
    d = Dispatcher(using, store)
    for a in range(accounts):
        d.dispatch("Open", {"id": f"a{a}", "owner": f"o{a}"})
    return accounts + deposit(store, accounts, deposits, using)


def deposit(store: Store, accounts: int, count: int, using: App = app) -> int:
    """Make `count` deposits spread over the open accounts a0…; returns messages."""
    d = Dispatcher(using, store)
    for i in range(count):
        d.dispatch("Deposit", {"id": f"a{i % accounts}", "amount": i + 1})
    return count


def check_order(payloads: list[dict[str, Any]]) -> None:
    """Per key, first deliveries come in stream-version order with no gaps."""
    seen: set[str] = set()
    last: dict[str, int] = {}
    for p in payloads:
        if p["message_id"] in seen:
            continue
        seen.add(p["message_id"])
        key = p["key"]
        assert p["stream_version"] == last.get(key, 0) + 1, (
            f"{key}: {last.get(key)} then {p['stream_version']}"
        )
        last[key] = p["stream_version"]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Lines a file sink wrote; a line torn by a kill -9 is skipped (its batch was not acknowledged)."""
    out = []
    if not path.exists():
        return out
    for line in path.read_bytes().splitlines():
        try:
            out.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue
    return out


class Receiver:
    """An HTTP server in a thread; `answers(n)` gives the status for the n-th request (0-based)."""

    def __init__(self, answers: Callable[[int], int] = lambda n: 200) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    n = len(receiver.requests)
                    receiver.requests.append((dict(self.headers.items()), body))
                status = answers(n)
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def payloads(self) -> list[dict[str, Any]]:
        with self.lock:
            return [orjson.loads(body) for _, body in self.requests]
