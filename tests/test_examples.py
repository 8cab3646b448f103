"""Every `Example:` line of every command's help is run against a sample store (the bank
sample) and must exit 0, on both backends; so is every console command line of the README
and docs/ (SQLite: the samples' own config)."""

from __future__ import annotations

import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import BANK_COMMANDS, ROOT, cli, subprocess_env

from cqrsctl.cli.reference import _root, example, walk
from cqrsctl.store import NewEvent, open_store

# The order the examples run in: each leaves the store as the next expects. Commands not
# listed (new ones) run after these, by name.
ORDER = [
    "init", "append", "dispatch", "streams list", "streams show", "events", "replay", "snapshots take",
    "snapshots list", "snapshots delete", "projections list", "projections catch-up", "projections status",
    "query", "projections skip", "projections retry", "projections rebuild", "projections reset",
    "sagas run", "sagas list", "sagas show", "sagas retry", "outbox status", "outbox list", "outbox peek",
    "outbox show", "outbox drain", "outbox retry", "outbox purge", "export", "import", "doctor", "top", "daemon",
]  # fmt: skip
LONG_RUNNING = {"daemon"}  # runs until stopped: started, then stopped with SIGTERM, must exit 0


def help_examples() -> list[tuple[str, str]]:
    found = [(" ".join(path), example(cmd)) for path, cmd in walk() if example(cmd)]
    root = example(_root())
    assert root is not None
    rank = {name: i for i, name in enumerate(ORDER)}
    found.sort(key=lambda item: (rank.get(item[0], len(ORDER)), item[0]))
    return [("(root)", root), *((name, line) for name, line in found if line is not None)]


EXAMPLES = help_examples()


def bank(url: str, *args: str) -> Any:
    return cli("--db", url, "--app", "samples/bank/app.py", *args).ok()


def sample_store(url: str) -> None:
    """The bank sample's first 300 commands, a transfer (T-1) and a second one (T9)
    whose saga failed, and a projection (balances) that failed: what the examples name."""
    lines = BANK_COMMANDS.read_text().splitlines()[:300]
    cli("--db", url, "--app", "samples/bank/app.py", "dispatch", "-", input="\n".join(lines) + "\n").ok()
    for transfer in ("T-1", "T9"):
        data = f'{{"transfer_id": "{transfer}", "source": "A-0001", "destination": "A-0002", "amount": "1"}}'
        bank(url, "dispatch", "TransferMoney", "--data", data)
    bank(url, "sagas", "run", "--once")


def fail_saga_and_projection(url: str) -> None:
    """`sagas retry`, `projections retry` and `projections skip` (of the failed event) act on
    failures only: make one of each. (The bank sample has no way to make a compensation or a
    handler fail, so the state is written directly, at an event that exists.)"""
    with open_store(url) as store:
        store.append("Audit-1", [NewEvent("NoteAdded", {"text": "to fail on"})])
        with store.transaction() as tx:
            record = tx.sagas.get("TransferSaga-Transfer-T9")
            assert record is not None
            record.status, record.error_message = "failed", "step credit_destination failed: example"
            tx.sagas.save(record)
        with store.transaction() as tx:
            cp = tx.tracking.get("balances", lock=True)
            assert cp is not None
            cp.status, cp.error, cp.error_position = "failed", "example failure", cp.position + 1
            tx.tracking.put(cp)


def wait_for_heartbeat(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    from cqrsctl.services.daemon import daemons

    deadline = time.monotonic() + timeout
    with open_store(url) as store:
        while not any(d.alive for d in daemons(store)):
            assert proc.poll() is None, f"the daemon exited with {proc.returncode}"
            assert time.monotonic() < deadline, f"no daemon heartbeat within {timeout}s"
            time.sleep(0.1)


def args_of(line: str, url: str, tmp: Path) -> list[str]:
    words = shlex.split(line)
    assert words[0] == "cqrsctl", line
    words = words[1:]
    for i, word in enumerate(words):
        if word == "--db":
            words[i + 1] = url
        elif word.startswith("file:///tmp/"):
            words[i] = f"file://{tmp}/{word.removeprefix('file:///tmp/')}"
    return words


@pytest.fixture
def sample_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(
        ROOT / "samples" / "bank", tmp_path / "samples" / "bank", ignore=shutil.ignore_patterns("*.db*")
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_help_example_runs_against_the_sample_store(store_url: str, sample_dir: Path) -> None:
    assert len(EXAMPLES) > 30
    sample_store(store_url)
    env = {"CQRSCTL_DB": store_url}
    for name, line in EXAMPLES:
        if name in ("projections skip", "projections retry"):
            fail_saga_and_projection(store_url)
        args = args_of(line, store_url, sample_dir)
        if name == "projections unskip":  # the position the skip example took: it depends on the store
            with open_store(store_url) as store, store.transaction() as tx:
                cp = tx.tracking.get("balances")
                assert cp is not None and cp.skipped, "the skip example skipped nothing"
                args[args.index("--position") + 1] = str(cp.skipped[-1]["position"])
        if name in LONG_RUNNING:
            proc = subprocess.Popen(
                [sys.executable, "-m", "cqrsctl", *args], cwd=sample_dir, env=subprocess_env(env),
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            wait_for_heartbeat(store_url, proc)  # started; it must now stop cleanly at SIGTERM
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, f"{line}\n{err.decode()}"
            continue
        result = cli(*args, env=env)
        assert result.code == 0, f"example of `{name}` failed: {line}\n{result}"


# -- the README and docs/ -----------------------------------------------------------------------------------

DOCS = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "cli.md")]
RUNS_UNTIL_STOPPED = re.compile(r"cqrsctl (.* )?(--follow|daemon(?!.*--once)|top(?!.*--once))")
SAMPLE_LINES = 100  # the samples' command files are cut to this many lines: the test stays fast


def console_blocks(path: Path) -> list[list[str]]:
    """The ```console blocks: their command lines, without `$ ` and trailing comments."""
    blocks: list[list[str]] = []
    inside = False
    for raw in path.read_text().splitlines():
        if raw.startswith("```"):
            inside = raw.strip() == "```console"
            if inside:
                blocks.append([])
            continue
        if inside and raw.strip():
            blocks[-1].append(re.sub(r"\s+#\s.*$", "", raw.strip().removeprefix("$ ")))
    return [b for b in blocks if b]


def runnable(line: str) -> str:
    """The parts of a line that run here: installing and running the test suite are left out,
    and so are other tools (`nats …`)."""
    parts = [p.strip() for p in line.split(" && ")]
    keep = [p for p in parts if p.startswith(("cqrsctl", "cd "))]
    return " && ".join(keep)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_blocks(blocks: list[list[str]], root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each block starts at the top of the checkout (as a reader would), its lines run in
    order (in this process: fast); a command that runs until stopped is started as a process
    and must still be running after 3 s."""
    for block in blocks:
        cwd = root
        for line in block:
            for part in filter(None, runnable(line).split(" && ")):
                words = shlex.split(part)
                if words[0] == "cd":
                    cwd = (cwd / words[1]).resolve()
                    continue
                # A fixed port could be taken on a shared machine.
                words = [re.sub(r"^127\.0\.0\.1:\d+$", f"127.0.0.1:{free_port()}", w) for w in words]
                if RUNS_UNTIL_STOPPED.search(part):
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "cqrsctl", *words[1:]], cwd=cwd, env=subprocess_env(),
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                    )  # fmt: skip
                    try:
                        time.sleep(3)
                        assert proc.poll() is None, f"{part} stopped: {proc.stderr.read().decode()}"  # type: ignore[union-attr]
                    finally:
                        proc.terminate()
                        proc.wait(30)
                    continue
                monkeypatch.chdir(cwd)
                result = cli(*words[1:])
                assert result.code == 0, f"{part} (in {cwd.relative_to(root)})\n{result}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_console_lines_of_the_docs_run(doc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = console_blocks(doc)
    if not any(runnable(line) for block in blocks for line in block):
        pytest.skip(f"{doc.name} has no console command of cqrsctl")
    if any("nats://" in line for block in blocks for line in block):
        from conftest import require_service

        require_service("NATS", "127.0.0.1", 4222)
    shutil.copytree(
        ROOT / "samples", tmp_path / "samples", ignore=shutil.ignore_patterns("*.db*", "__pycache__")
    )
    for commands in (tmp_path / "samples").glob("*/commands.jsonl"):
        commands.write_text("".join(commands.read_text().splitlines(keepends=True)[:SAMPLE_LINES]))
    run_blocks(blocks, tmp_path, monkeypatch)
