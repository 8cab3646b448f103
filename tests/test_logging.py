"""The library logs with `logging`; the command line writes it to stderr as text (a UTC
timestamp and the message) or, with `--log-format json`, one JSON object per line. No
secret of a database or sink URL reaches either."""

from __future__ import annotations

import logging
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import orjson
import pytest
from helpers import command, subprocess_env
from outbox_support import fill

from cqrsctl.cli import logs
from cqrsctl.cli.runtime import scrub_urls
from cqrsctl.store import Store

OUTBOX_APP = f"{Path(__file__).parent / 'outbox_support.py'}:app"
DB_SECRET = "db-s3cret-pw"
SINK_SECRET = "sink-s3cret-pw"
# Nothing listens on the discard port: every send fails, and says so in the log.
SINK = f"http://relay:{SINK_SECRET}@127.0.0.1:9/hook"


def with_password(url: str) -> str:
    """`url` with a password; PostgreSQL trusts loopback, so it is never asked for."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    user, host = parts.netloc.split("@", 1)
    return urlunsplit(parts._replace(netloc=f"{user.split(':')[0]}:{DB_SECRET}@{host}"))


def run_daemon(url: str, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(*options, "--db", url, "--app", OUTBOX_APP, "daemon", "--once", "--outbox-sink", SINK),
        capture_output=True, text=True, timeout=120, env=subprocess_env(),
    )  # fmt: skip


def test_daemon_json_log_lines_parse_and_hold_no_secret(store: Store, store_url: str) -> None:
    fill(store, 2, 3)
    done = run_daemon(with_password(store_url), "--log-format", "json")
    assert done.returncode == 0, done.stderr
    entries = [orjson.loads(line) for line in done.stderr.splitlines()]
    assert DB_SECRET not in done.stderr and SINK_SECRET not in done.stderr
    messages = [e["message"] for e in entries]
    assert any("started" in m for m in messages) and any("stopped" in m for m in messages), messages
    assert any(m.startswith("outbox:") for m in messages), messages  # the failed sends
    for e in entries:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", e["time"])
        assert e["level"] in ("info", "warning", "error") and e["logger"].startswith("cqrsctl")
    started = next(e for e in entries if "started" in e["message"])
    assert started["workers"] == ["outbox"] and started["daemon_id"] in started["message"]


def test_daemon_text_log_is_a_timestamp_and_the_message(store: Store, store_url: str) -> None:
    fill(store, 1, 1)
    done = run_daemon(with_password(store_url))
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines and all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \S", line) for line in lines), (
        lines
    )
    assert DB_SECRET not in done.stderr and SINK_SECRET not in done.stderr
    # The same run under the environment's format instead of the flag.
    env_run = subprocess.run(
        command("-q", "--db", store_url, "--app", OUTBOX_APP, "daemon", "--once", "--outbox-sink", SINK),
        capture_output=True, text=True, timeout=120, env=subprocess_env({"CQRSCTL_LOG_FORMAT": "json"}),
    )  # fmt: skip
    assert env_run.returncode == 0 and all(orjson.loads(line) for line in env_run.stderr.splitlines())


def test_json_formatter_scrubs_messages_and_fields(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"postgresql://app:{DB_SECRET}@db.example:5432/prod"
    logs.install("json", quiet=False, verbose=False, scrub=lambda m: scrub_urls(m, url))
    try:
        logging.getLogger("cqrsctl.tests").warning(f"cannot reach {url}", extra={"url": url, "n": 3})
        logging.getLogger("cqrsctl.tests").info("not shown without --verbose")
    finally:
        logs.install("text", quiet=False, verbose=False, scrub=str)
    err = capsys.readouterr().err
    (entry,) = [orjson.loads(line) for line in err.splitlines()]
    assert DB_SECRET not in err
    assert entry["level"] == "warning" and entry["n"] == 3 and "db.example" in entry["url"]


def test_bad_log_format_is_a_usage_error(tmp_path: Path) -> None:
    done = subprocess.run(
        command("--log-format", "xml", "--db", f"sqlite:///{tmp_path / 'x.db'}", "init"),
        capture_output=True, text=True, timeout=60, env=subprocess_env(),
    )  # fmt: skip
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1 and "--log-format" in done.stderr
    assert not (tmp_path / "x.db").exists()
