"""Running the CLI from tests: in-process through typer's CliRunner, or as a real process.

Both return a :class:`Run` with the exit code and stdout/stderr kept apart, so a test can
check that data went to stdout and the one error line to stderr. CQRSCTL_* variables
of the calling environment never leak in: a test passes exactly the ones it means.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from typer.testing import CliRunner

from cqrsctl.cli import app as cli_app
from cqrsctl.store import Store, StoredEvent, Transaction, open_store

ROOT = Path(__file__).resolve().parent.parent
BANK_APP = str(ROOT / "samples" / "bank" / "app.py")
USERS_APP = str(ROOT / "samples" / "users" / "app.py")
BANK_COMMANDS = ROOT / "samples" / "bank" / "commands.jsonl"
USERS_COMMANDS = ROOT / "samples" / "users" / "commands.jsonl"

_SETTINGS_ENV = ("CQRSCTL_DB", "CQRSCTL_APP")


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    exception: BaseException | None = None

    def json(self) -> Any:
        return orjson.loads(self.stdout)

    def jsonl(self) -> list[Any]:
        return [orjson.loads(line) for line in self.stdout.splitlines() if line.strip()]

    def ok(self) -> Run:
        """Assert success (showing the output when not) and return self for chaining."""
        assert self.code == 0, f"exit {self.code}\nstdout: {self.stdout}\nstderr: {self.stderr}"
        return self

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def cli(*args: str, input: str | bytes | None = None, env: Mapping[str, str] | None = None) -> Run:
    """Run `cqrsctl ARGS` in this process (fast; most tests use this)."""
    runner = CliRunner()
    # None removes a variable for the duration of the call; a wide terminal keeps tables whole.
    full_env: dict[str, str | None] = {name: None for name in _SETTINGS_ENV}
    full_env["COLUMNS"] = "250"
    full_env.update(env or {})
    result = runner.invoke(cli_app, list(args), input=input, env=full_env, prog_name="cqrsctl")
    exc = result.exception if not isinstance(result.exception, SystemExit) else None
    return Run(result.exit_code, result.stdout, result.stderr, exc)


def subprocess_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in _SETTINGS_ENV}
    base.update({"COLUMNS": "250", "PYTHONUNBUFFERED": "1"})
    base.update(env or {})
    return base


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "cqrsctl", *args]


def run(
    *args: str,
    input: str | bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float = 120,
) -> Run:
    """Run `python -m cqrsctl ARGS` as a real process."""
    data = input.encode() if isinstance(input, str) else input
    proc = subprocess.run(
        command(*args),
        input=data,
        capture_output=True,
        env=subprocess_env(env),
        cwd=cwd,
        timeout=timeout,
        check=False,
    )
    return Run(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def assert_error(result: Run, code: int, *needles: str) -> str:
    """The run failed with `code` and said so in exactly one line on stderr (no traceback):
    `error: …`, or the JSON error object under JSON formats.

    Returns that line; each of `needles` must appear in it.
    """
    assert result.code == code, str(result)
    assert result.exception is None, f"uncaught {result.exception!r}\n{result}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr\n{result}"
    line = lines[0]
    if line.startswith("{"):  # under --json / --format json*: {"error", "exit_code", "type"}
        error = orjson.loads(line)
        assert error["exit_code"] == code, line
        line = "error: " + error["error"]
    assert line.startswith("error:"), line
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def jsonl(lines: Sequence[Mapping[str, Any]]) -> str:
    return "".join(orjson.dumps(dict(d)).decode() + "\n" for d in lines)


def all_events(url: str) -> list[StoredEvent]:
    with open_store(url) as store:
        return list(store.iter_all())


def event_count(url: str) -> int:
    return len(all_events(url))


class _Rollback(Exception):
    """Ends a rolled_back() block."""


@contextmanager
def rolled_back(store: Store) -> Iterator[Transaction]:
    """A write transaction rolled back when the block ends: it holds locks for a while and
    writes nothing (tests use it to make other processes queue, then start together)."""
    try:
        with store.transaction() as tx:
            yield tx
            raise _Rollback
    except _Rollback:
        pass


def at_a_terminal(args: list[str], answer: bytes = b"", timeout: float = 60) -> tuple[int, str]:
    """Run `python -m cqrsctl ARGS` with stdin, stdout and stderr on a pseudo-terminal,
    answering `answer` to its question; returns (exit code, everything it printed)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(command(*args), stdin=slave, stdout=slave, stderr=slave, env=subprocess_env())
    os.close(slave)
    out, answered = b"", False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # the child closed the terminal: it has ended
                    break
                if not chunk:
                    break
                out += chunk
                if answer and not answered and b"[y/N]" in out:
                    os.write(master, answer)
                    answered = True
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return code, out.decode(errors="replace")
