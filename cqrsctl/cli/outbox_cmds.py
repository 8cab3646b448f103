"""`cqrsctl outbox …`: inspect the outbox and drain it to a sink."""

from __future__ import annotations

import sys
import time
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import typer

from ..errors import UsageError
from ..services import outbox as service
from ..signals import on_stop
from ..sinks import open_sink
from ..store.base import utcnow
from ..times import age, parse_duration, parse_timestamp
from .runtime import MAX_INT, Runtime, confirm, duration_option, runtime, to_json

outbox_app = typer.Typer(no_args_is_help=True, help="Inspect the outbox and deliver it to a sink.")


@outbox_app.command("status")
def status(ctx: typer.Context) -> None:
    """Counts by status and topic, messages due now, and the age of the oldest pending one.

    Example: cqrsctl outbox status --json
    """
    rt = runtime(ctx)
    st = service.status(rt.reading())
    if rt.output.json:
        rt.output.data(st)
        return
    rt.output.say(
        f"pending {st.counts['pending']} (due now {st.due}), delivered {st.counts['delivered']},"
        f" dead {st.counts['dead']}; oldest pending {age(st.oldest_pending_age)}"
    )
    if st.topics and not rt.output.quiet:
        rt.output.table(
            ("topic", "pending", "delivered", "dead", "oldest pending"),
            ((t["topic"], t["pending"], t["delivered"], t["dead"], t["oldest_pending"]) for t in st.topics),
        )


@outbox_app.command("list")
def list_(
    ctx: typer.Context,
    status: str = typer.Option(None, "--status", "-s", help="pending, delivered or dead."),
    topic: str = typer.Option(None, "--topic", "-t", help="Only this topic."),
    limit: int = typer.Option(50, "--limit", "-n", min=1, max=MAX_INT, help="At most this many messages."),
) -> None:
    """List outbox messages, oldest first.

    Example: cqrsctl outbox list --status dead --limit 20
    """
    rt = runtime(ctx)
    messages = rt.output.page(service.list_messages(rt.reading(), status, topic, limit + 1), limit)
    if rt.output.json:
        rt.output.records(m.to_dict(payload=False) for m in messages)
        return
    rt.output.table(
        ("seq", "message id", "topic", "key", "status", "tries", "next attempt", "last error"),
        (
            (
                m.seq,
                m.message_id,
                m.topic,
                m.key,
                m.status,
                m.attempts,
                m.next_attempt_at if m.status == "pending" else None,
                (m.last_error or "")[:60],
            )
            for m in messages
        ),
    )


@outbox_app.command("peek")
def peek(
    ctx: typer.Context,
    topic: str = typer.Option(None, "--topic", "-t", help="Only this topic."),
    key: str = typer.Option(None, "--key", "-k", help="Only messages with this key."),
    limit: int = typer.Option(10, "--limit", "-n", min=1, max=MAX_INT, help="At most this many messages."),
    message_format: str = typer.Option(
        None,
        "--message-format",
        help="Message format, as a sink's ?format= (cqrsctl, nestjs, cloudevents, eventbridge); default: the app's, else cqrsctl.",
    ),
) -> None:
    """Print pending messages exactly as a sink receives them, in delivery order, claiming nothing.

    One JSON object per line, as `outbox drain --sink 'stdout?format=…'` writes them (unless
    --format says otherwise). Peeking changes nothing: the messages stay pending.

    Example: cqrsctl outbox peek --topic Account -n 3
    """
    rt = runtime(ctx)
    if not rt.output.json:
        rt.output.format = "jsonl"  # the sink's own form is the point of peeking
    if message_format is None:
        app = rt.app(required=False)
        message_format = app.outbox_format if app is not None else "cqrsctl"
    rt.output.records(service.peek(rt.reading(), topic, key, limit, message_format))


@outbox_app.command("show")
def show(
    ctx: typer.Context, ident: str = typer.Argument(..., metavar="ID", help="Message id (or seq).")
) -> None:
    """Show one message with its payload, headers and delivery state.

    Example: cqrsctl outbox show 1
    """
    rt = runtime(ctx)
    message = service.show(rt.reading(), ident)
    if rt.output.json:
        rt.output.data(message)
        return
    d = message.to_dict()
    rt.output.fields(
        [(k, v) for k, v in d.items() if k not in ("payload", "headers")]
        + [("headers", to_json(d["headers"]).decode()), ("payload", to_json(d["payload"]).decode())]
    )


@outbox_app.command("retry")
def retry(
    ctx: typer.Context,
    ident: str = typer.Argument(None, metavar="[ID]", help="Message id (or seq) to make due now."),
    dead: bool = typer.Option(False, "--dead", help="Requeue every dead message."),
) -> None:
    """Requeue a dead (or backing-off) message, or every dead one, with fresh attempts.

    Example: cqrsctl outbox retry --dead
    """
    rt = runtime(ctx)
    n = service.retry(rt.store(), ident, dead=dead, actor=rt.actor)
    if rt.output.json:
        rt.output.data({"requeued": n})
    else:
        rt.output.say(f"requeued {n} message{'s' if n != 1 else ''}")


@outbox_app.command("purge")
def purge(
    ctx: typer.Context,
    delivered: bool = typer.Option(False, "--delivered", help="Delete delivered messages."),
    dead: bool = typer.Option(False, "--dead", help="Delete dead messages."),
    older_than: str = typer.Option(
        ..., "--older-than", help="Only those delivered (dead: created) longer ago than this: 7d, 12h, 30m."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Count what would be deleted; delete nothing."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete old delivered and/or dead messages (pending ones are never purged).

    Example: cqrsctl outbox purge --delivered --older-than 7d
    """
    rt = runtime(ctx)
    statuses = [s for s, on in (("delivered", delivered), ("dead", dead)) if on]
    older, store = parse_duration(older_than, zero=True), rt.store()
    n = service.purge(store, statuses, older, dry_run=True)
    if not dry_run:
        if n:
            plural = "s" if n != 1 else ""
            confirm(rt, f"Delete {n} {' and '.join(statuses)} message{plural} older than {older_than}?", yes)
        n = service.purge(store, statuses, older, actor=rt.actor)
    if rt.output.json:
        rt.output.data({"purged": n, "dry_run": True} if dry_run else {"purged": n})
    elif dry_run:
        rt.output.say(f"would purge {n} message{'s' if n != 1 else ''}; nothing changed (--dry-run)")
    else:
        rt.output.say(f"purged {n} message{'s' if n != 1 else ''}")


def _clock(now: str | None) -> Any:
    if now is None:
        return utcnow
    start = parse_timestamp(now, "--now")
    began = time.monotonic()
    return lambda: start + timedelta(seconds=time.monotonic() - began)


@outbox_app.command("drain")
def drain(
    ctx: typer.Context,
    sink_url: str = typer.Option(
        ...,
        "--sink",
        envvar="CQRSCTL_OUTBOX_SINK",
        help="stdout, file:///x.jsonl, http(s)://…, redis://…, nats://…?stream=S, amqp://…?exchange=E, kafka://…,"
        " bullmq://…/QUEUE; ?format=cqrsctl|nestjs|cloudevents|cloudevents-binary|eventbridge.",
    ),
    max_messages: int = typer.Option(
        None, "--max", min=1, max=MAX_INT, help="Stop after this many messages."
    ),
    timeout: float = duration_option(None, "--timeout", help="Stop after this long: 50, 50s, 5m."),
    batch: int = typer.Option(
        100, "--batch", min=1, max=MAX_INT, help="Messages claimed (and sent) at a time."
    ),
    topic: list[str] = typer.Option(None, "--topic", "-t", help="Only these topics (repeatable)."),
    max_attempts: int = typer.Option(
        10, "--max-attempts", min=1, max=MAX_INT, help="Attempts before a message is dead."
    ),
    backoff: float = duration_option("5s", "--backoff", help="First retry delay; doubles per failure."),
    backoff_max: float = duration_option("1h", "--backoff-max", help="Longest retry delay."),
    lease: float = duration_option(
        "60s", "--lease", help="How long a claim holds messages (renewed while sending)."
    ),
    send_timeout: float = duration_option("10s", "--send-timeout", help="How long a sink may take per send."),
    now: str = typer.Option(None, "--now", hidden=True, help="Pretend the clock starts here (tests)."),
) -> None:
    """Deliver due messages to a sink, in order per key, at least once; safe to run from cron.

    Exit codes: 0 every due message delivered; 12 some failed, died or the sink was
    unavailable; 13 stopped by --max, --timeout or a signal with due messages left.

    Example: cqrsctl outbox drain --sink file:///tmp/bank-outbox.jsonl --max 10000 --timeout 50s
    """
    rt = runtime(ctx)
    if send_timeout < 0.1:
        raise UsageError("--send-timeout must be at least 0.1s")
    store = rt.store()
    # The app's `outbox_format` is the default message format: not needed when the URL names one.
    app = None if "format" in parse_qs(urlsplit(sink_url).query) else rt.app(required=False)
    sink = open_sink(sink_url, timeout=send_timeout, format=app.outbox_format if app else None)
    total = None
    if rt.output.interactive:
        total = min(service.status(store).due, max_messages or MAX_INT)
    with on_stop() as stop, rt.output.progress("draining", total) as advance:
        report = service.drain(
            store, sink, max_messages=max_messages, timeout=timeout, batch=batch, max_attempts=max_attempts,
            backoff=service.Backoff(backoff, backoff_max), lease=lease, topics=topic or None, stop=stop,
            on_progress=advance, clock=_clock(now),
        )  # fmt: skip
    _show_drain(rt, report, sink_url)
    if report.exit_code:
        raise typer.Exit(report.exit_code)


def _show_drain(rt: Runtime, report: service.DrainReport, sink_url: str) -> None:
    if rt.output.json:
        # With the stdout sink the messages own stdout; the summary goes to stderr.
        stream = sys.stderr.buffer if sink_url.split("?", 1)[0] in ("stdout", "-") else sys.stdout.buffer
        stream.write(to_json(report) + b"\n")
        stream.flush()
        return
    for e in report.errors[:10]:
        dead = " (now dead)" if e["dead"] else ""
        rt.output.error(f"message {e['message_id']} attempt {e['attempts']}{dead}: {e['error']}")
    rt.output.say(report.summary())
    if report.exit_code and report.error:
        rt.output.error(report.error)


def register(app: typer.Typer) -> None:
    app.add_typer(outbox_app, name="outbox")
