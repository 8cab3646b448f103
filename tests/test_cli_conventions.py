"""Command-line conventions: --version, global options anywhere, output formats parsed back,
JSON errors, durations, `events --from`, `outbox peek`, doctor's report, batch exit codes,
and packaging (licence, the postgres extra)."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import threading
import time
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import (
    BANK_APP,
    BANK_COMMANDS,
    ROOT,
    assert_error,
    at_a_terminal,
    cli,
    command,
    run,
    subprocess_env,
)

import cqrsctl


def seed(url: str, n: int = 40) -> None:
    lines = BANK_COMMANDS.read_text().splitlines()[:n]
    cli("--db", url, "--app", BANK_APP, "dispatch", "-", input="\n".join(lines) + "\n").ok()


def bank(url: str, *args: str, **kw: Any) -> Any:
    return cli("--db", url, "--app", BANK_APP, *args, **kw)


# -- --version, option placement --------------------------------------------------------------------


def test_version_has_one_source() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert cqrsctl.__version__ == metadata.version("cqrsctl") == declared
    assert cli("--version").ok().stdout == f"cqrsctl {declared}\n"


def test_global_options_before_or_after_the_command(store_url: str) -> None:
    seed(store_url)
    before = cli("--db", store_url, "--json", "streams", "list", "--category", "Account").ok().jsonl()
    after = cli("streams", "list", "--category", "Account", "--db", store_url, "--json").ok().jsonl()
    mixed = (
        cli("streams", "--db", store_url, "list", "--json", "-n", "100", "--category", "Account").ok().jsonl()
    )
    assert before == after == mixed and len(before) > 5
    assert cli("doctor", "--db", store_url, "--json").ok().json()["healthy"] is True
    assert cli("doctor", f"--db={store_url}", "--format=json").ok().json()["healthy"] is True
    quiet = bank(store_url, "projections", "catch-up", "-q")
    assert quiet.ok().stderr == ""
    # A command's own option keeps its value, even when that value looks like a global option.
    bad = cli("append", "S-1", "T", "--data", "--json", "--db", store_url)
    assert_error(bad, 3, "--data is not valid JSON")
    # After `--`, nothing is moved.
    assert cli("--db", store_url, "streams", "show", "--", "--json").code == 6


# -- formats ---------------------------------------------------------------------------------------------


def parse(fmt: str, text: str) -> list[dict[str, Any]]:
    if fmt == "json":
        value = orjson.loads(text)
        assert isinstance(value, list)
        return value
    if fmt == "jsonl":
        return [orjson.loads(line) for line in text.splitlines()]
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(text)))
    return list(
        csv.DictReader(
            io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE, quotechar=None, escapechar="\\"
        )
    )


def as_text(record: dict[str, Any]) -> dict[str, str]:
    """A JSON record as CSV shows it: nested values as JSON, null as empty, true/false."""
    out = {}
    for k, v in record.items():
        if v is None:
            out[k] = ""
        elif isinstance(v, bool):
            out[k] = "true" if v else "false"
        elif isinstance(v, dict | list):
            out[k] = orjson.dumps(v).decode()
        else:
            out[k] = str(v)
    return out


LISTS = [
    ("streams", "list"),
    ("events", "--limit", "1000"),
    ("outbox", "list"),
    ("snapshots", "list"),
    ("projections", "status"),
    ("sagas", "list"),
]


@pytest.mark.parametrize("args", LISTS, ids=lambda a: " ".join(a[:2]))
def test_every_format_parses_back_to_the_same_records(store_url: str, args: tuple[str, ...]) -> None:
    seed(store_url, 200)
    bank(store_url, "dispatch", "TransferMoney", "--data",
         '{"transfer_id": "T-1", "source": "A-0001", "destination": "A-0002", "amount": "1"}').ok()  # fmt: skip
    bank(store_url, "sagas", "run", "--once").ok()
    bank(store_url, "snapshots", "take", "Account-A-0001").ok()
    # A value with a tab, a newline, quotes and a backslash survives every format.
    cli("--db", store_url, "append", "Odd-1", "Odd", "--data", '{"s": "a\\tb\\nc \\"q\\" \\\\"}').ok()
    bank(store_url, "projections", "catch-up").ok()  # lag 0: the same figures in every run below
    records = parse("jsonl", bank(store_url, *args, "--json").ok().stdout)
    assert records, args
    assert len({tuple(r) for r in records}) == 1  # one shape per command
    for fmt in ("json", "jsonl", "csv", "tsv"):
        out = bank(store_url, *args, "--format", fmt).ok().stdout
        parsed = parse(fmt, out)
        expected = records if fmt.startswith("json") else [as_text(r) for r in records]
        assert parsed == expected, fmt
    for r in records:  # snake_case keys; numbers stay numbers
        assert all(k == k.lower() and " " not in k for k in r), r
    if args[0] == "events":
        odd = [r for r in records if r["stream_id"] == "Odd-1"]
        assert odd and odd[0]["data"] == {"s": 'a\tb\nc "q" \\'}
        assert isinstance(records[0]["global_position"], int)


def test_result_commands_print_one_object_in_json_and_one_row_in_csv(store_url: str) -> None:
    seed(store_url)
    status = cli("--db", store_url, "outbox", "status", "--format", "json").ok().json()
    assert isinstance(status, dict) and isinstance(status["pending"], int) and status["pending"] > 0
    (again,) = cli("--db", store_url, "outbox", "status", "--json").ok().jsonl()
    assert again.keys() == status.keys() and again["pending"] == status["pending"]
    rows = parse("csv", cli("--db", store_url, "outbox", "status", "--format", "csv").ok().stdout)
    assert len(rows) == 1 and rows[0]["pending"] == str(status["pending"])
    assert orjson.loads(rows[0]["topics"]) == status["topics"]


def test_projection_json_shapes(store_url: str) -> None:
    seed(store_url)
    bank(store_url, "projections", "catch-up").ok()
    status = bank(store_url, "projections", "status", "--json").ok().jsonl()
    assert {s["name"] for s in status} == {"balances", "daily_totals"}
    assert all(isinstance(s["stored_version"], int) for s in status)
    plans = bank(store_url, "projections", "rebuild", "--all", "--dry-run", "--format", "json").ok().json()
    assert all(isinstance(p["live_version"], int) for p in plans)
    bank(store_url, "dispatch", "Deposit", "--data", '{"account_id": "A-0001", "amount": "1"}').ok()
    position = status[0]["head"] + 1  # the event just stored, not yet projected
    bank(
        store_url,
        "projections",
        "skip",
        "balances",
        "--position",
        str(position),
        "--reason",
        "bad data",
        "--yes",
    ).ok()
    (balances,) = bank(store_url, "projections", "status", "balances", "--json").ok().jsonl()
    assert balances["skipped"] == [
        {"position": position, "at": balances["skipped"][0]["at"], "error": None, "reason": "bad data"}
    ]


def test_saga_json_is_snake_case(store_url: str) -> None:
    seed(store_url)
    bank(store_url, "dispatch", "TransferMoney", "--data",
         '{"transfer_id": "T-1", "source": "A-0001", "destination": "A-0002", "amount": "1"}').ok()  # fmt: skip
    bank(store_url, "sagas", "run", "--once").ok()
    view = bank(store_url, "sagas", "show", "TransferSaga-Transfer-T-1", "--format", "json").ok().json()

    def keys(value: Any) -> set[str]:
        if isinstance(value, dict):
            return set(value) | {k for v in value.values() for k in keys(v)}
        if isinstance(value, list):
            return {k for v in value for k in keys(v)}
        return set()

    assert {"saga_id", "saga_type", "current_step", "total_steps", "compensation_actions"} <= set(view)
    everything = keys({k: v for k, v in view.items() if k != "state"})
    assert all(k == k.lower() for k in everything), sorted(k for k in everything if k != k.lower())


def test_errors_are_json_under_json_formats(store_url: str) -> None:
    cli("--db", store_url, "init").ok()
    for flags in (("--json",), ("--format", "json"), ("--format", "jsonl")):
        result = cli("--db", store_url, *flags, "streams", "show", "Nope-1")
        assert result.code == 6 and result.stdout == ""
        assert orjson.loads(result.stderr) == {
            "error": "stream 'Nope-1' not found", "exit_code": 6, "type": "NotFoundError",
        }  # fmt: skip
    usage = cli("streams", "show", "--bogus", "--json")
    assert usage.code == 2 and orjson.loads(usage.stderr)["exit_code"] == 2
    # csv and tables keep the one plain line.
    assert_error(cli("--db", store_url, "--format", "csv", "streams", "show", "Nope-1"), 6, "Nope-1")


def test_durations_take_units_everywhere(store_url: str) -> None:
    seed(store_url)
    for value in ("50", "50s", "0.5m", "1h"):
        bank(store_url, "projections", "catch-up", "--timeout", value, "--retry-delay", "0.2s").ok()
    assert_error(bank(store_url, "projections", "catch-up", "--timeout", "soon"), 2, "--timeout", "duration")
    assert_error(bank(store_url, "projections", "catch-up", "--timeout", "-5"), 2, "duration")
    result = cli("--db", store_url, "outbox", "drain", "--sink", "stdout", "--timeout", "1m", "--max", "1",
                 "--backoff", "10", "--lease", "2m", "--send-timeout", "5s")  # fmt: skip
    assert result.code in (0, 13), str(result)
    assert len(result.jsonl()) == 1


def test_sagas_run_once_is_the_only_mode() -> None:
    assert "--no-once" not in cli("sagas", "run", "--help").ok().stdout
    assert cli("sagas", "run", "--no-once").code == 2


# -- events --from, outbox peek ---------------------------------------------------------------------------


def test_events_from_start_end_and_position(store_url: str) -> None:
    seed(store_url, 10)
    everything = cli("--db", store_url, "events", "--json").ok().jsonl()
    assert cli("--db", store_url, "events", "--from", "start", "--json").ok().jsonl() == everything
    assert cli("--db", store_url, "events", "--from", "end", "--json").ok().stdout == ""
    third = everything[2]["global_position"]
    assert cli("--db", store_url, "events", "--from", str(third), "--json").ok().jsonl() == everything[3:]
    assert_error(cli("--db", store_url, "events", "--from", "middle"), 2, "start, end")
    assert_error(cli("--db", store_url, "events", "--from", "end", "--from-position", "3"), 2, "not both")


def test_more_hint_follows_the_table_at_a_terminal_only(store_url: str) -> None:
    cli("--db", store_url, "append", "hint-1", "Noted", "--data", "{}").ok()
    cli("--db", store_url, "append", "hint-2", "Noted", "--data", "{}").ok()
    cli("--db", store_url, "append", "hint-3", "Noted", "--data", "{}").ok()
    code, out = at_a_terminal(["--db", store_url, "events", "--limit", "2"])
    assert code == 0, out
    hint = out.index("… more than 2; use --limit to see more")
    assert "hint-1" in out[:hint] and "hint-2" in out[:hint] and "hint-3" not in out, out
    assert out[hint:].strip() == "… more than 2; use --limit to see more", out  # below the table
    code, out = at_a_terminal(["--db", store_url, "events", "--limit", "3"])
    assert code == 0 and "more than" not in out and "hint-3" in out, out
    piped = cli("--db", store_url, "events", "--limit", "2").ok()  # off a terminal: rows only
    assert "more than" not in piped.stderr + piped.stdout and "hint-2" in piped.stdout


def test_events_follow_from_end_prints_only_new_events(store_url: str) -> None:
    seed(store_url, 10)
    proc = subprocess.Popen(
        command("--db", store_url, "events", "--follow", "--from", "end"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=subprocess_env(),
    )  # fmt: skip
    try:
        # No handshake says when the follower has read the head: append until a line arrives.
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        deadline = time.monotonic() + 60
        n = 0
        while not got and time.monotonic() < deadline:
            n += 1
            cli("--db", store_url, "append", f"Late-{n}", "Late", "--data", "{}").ok()
            reader.join(0.5)
        assert got, "no event from `events --follow --from end` within 60 s"
        event = orjson.loads(got[0])
        assert event["stream_id"].startswith("Late-") and event["event_type"] == "Late"
    finally:
        proc.terminate()
        proc.wait(10)


def test_outbox_peek_shows_what_a_sink_gets_and_claims_nothing(store_url: str) -> None:
    seed(store_url, 30)
    before = cli("--db", store_url, "outbox", "list", "--json", "-n", "1000").ok().jsonl()
    peeked = cli("--db", store_url, "outbox", "peek", "-n", "5").ok().stdout
    assert cli("--db", store_url, "outbox", "list", "--json", "-n", "1000").ok().jsonl() == before
    drained = cli("--db", store_url, "outbox", "drain", "--sink", "stdout", "--max", "5").stdout
    assert peeked == drained and len(peeked.splitlines()) == 5
    # By topic and key: only matching pending messages, in delivery order.
    rest = cli("--db", store_url, "outbox", "peek", "-n", "1000").ok().jsonl()
    key = rest[0]["key"]
    by_key = cli("--db", store_url, "outbox", "peek", "--key", key, "--topic", rest[0]["topic"]).ok().jsonl()
    assert by_key == [m for m in rest if m["key"] == key and m["topic"] == rest[0]["topic"]][:10]
    assert cli("--db", store_url, "outbox", "peek", "--topic", "no-such-topic").ok().stdout == ""
    # In another message format: what a sink with that ?format= gets.
    for fmt in ("nestjs", "cloudevents", "eventbridge"):
        peeked = cli("--db", store_url, "outbox", "peek", "-n", "3", "--message-format", fmt).ok().stdout
        drained = cli(
            "--db", store_url, "outbox", "drain", "--sink", f"stdout?format={fmt}", "--max", "1"
        ).stdout
        assert peeked.splitlines()[0] == drained.strip() and len(peeked.splitlines()) == 3
    assert_error(cli("--db", store_url, "outbox", "peek", "--message-format", "nope"), 2, "nope")


# -- doctor, dispatch --file ------------------------------------------------------------------------------


def test_doctor_prints_its_report_when_healthy_and_when_not(store_url: str) -> None:
    seed(store_url)
    report = cli("--db", store_url, "doctor", "--json").ok().json()
    assert report["healthy"] is True and report["checks"][0] == {
        "name": "connection", "ok": True, "detail": report["checks"][0]["detail"],
    }  # fmt: skip
    table = cli("--db", store_url, "doctor").ok().stdout
    assert "connection" in table


def test_dispatch_file_exit_code_is_the_same_on_a_rerun(store_url: str, tmp_path: Path) -> None:
    lines = BANK_COMMANDS.read_text().splitlines()[:5]
    bad = orjson.dumps(
        {"command": "Withdraw", "id": "w-too-much", "data": {"account_id": "A-0001", "amount": "99999"}}
    )
    batch = tmp_path / "batch.jsonl"
    batch.write_text("\n".join([*lines, bad.decode()]) + "\n")
    first = bank(store_url, "dispatch", "--file", str(batch))
    again = bank(store_url, "dispatch", "--file", str(batch))
    assert first.code == again.code == 14, (first, again)
    only_bad = tmp_path / "bad.jsonl"
    only_bad.write_text(bad.decode() + "\n")
    assert bank(store_url, "dispatch", "--file", str(only_bad)).code == 5
    assert bank(store_url, "dispatch", "--file", str(only_bad)).code == 5
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(lines) + "\n")
    assert bank(store_url, "dispatch", "--file", str(good)).code == 0  # all already done


# -- packaging ---------------------------------------------------------------------------------------------


def test_license_file_matches_the_declared_licence() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == {"text": "MIT"}
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Permission is hereby granted, free of charge" in text
    assert "License :: OSI Approved :: MIT License" in project["classifiers"]


def test_postgres_driver_is_an_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("psycopg")]
    extras = project["optional-dependencies"]
    assert any(d.startswith("psycopg") for d in extras["postgres"])
    assert set(extras["postgres"]) <= set(extras["dev"])


def test_sqlite_never_imports_the_postgres_driver(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['psycopg'] = None; sys.modules['psycopg_pool'] = None\n"  # as if not installed
        "from typer.testing import CliRunner\n"
        "from cqrsctl.cli import app\n"
        f"r = CliRunner().invoke(app, ['--db', 'sqlite:///{tmp_path}/x.db', 'append', 'A-1', 'T', '--data', '{{}}'])\n"
        "assert r.exit_code == 0, r.output\n"
        "r = CliRunner().invoke(app, ['--db', 'postgresql://postgres@127.0.0.1:1/x', 'streams', 'list'])\n"
        "print(r.exit_code, r.stderr.strip())\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        proc.stdout.strip() == "7 error: PostgreSQL needs the psycopg driver: pip install 'cqrsctl[postgres]'"
    )


def test_run_as_a_process_too() -> None:
    assert run("--version").ok().stdout.startswith("cqrsctl ")


# -- top and metrics, with a daemon working ---------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def scrape(port: int) -> dict[str, float]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_top_once_and_metrics_while_a_daemon_works(store_url: str, tmp_path: Path) -> None:
    seed(store_url, 60)
    port = free_port()
    sink = tmp_path / "out.jsonl"
    log = tmp_path / "daemon.log"
    daemon = subprocess.Popen(
        command("--db", store_url, "--app", BANK_APP, "daemon", "--poll-interval", "0.05",
                "--outbox-sink", f"file://{sink}", "--metrics", f"127.0.0.1:{port}"),
        stdout=subprocess.DEVNULL, stderr=log.open("ab"), env=subprocess_env(),
    )  # fmt: skip
    try:
        wait_for(lambda: "metrics at" in log.read_text(), 60, "the metrics endpoint")
        rest = BANK_COMMANDS.read_text().splitlines()[60:200]
        writer = subprocess.Popen(
            command("--db", store_url, "--app", BANK_APP, "dispatch", "-"),
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=subprocess_env(),
        )  # fmt: skip
        writer.communicate(("\n".join(rest) + "\n").encode(), timeout=300)
        assert writer.returncode == 0
        during = scrape(port)  # the endpoint answers while the daemon works
        assert during["cqrsctl_events_head_position"] > 0

        def settled() -> Any:
            status = bank(store_url, "projections", "status", "--json").ok().jsonl()
            outbox = cli("--db", store_url, "outbox", "status", "--json").ok().json()
            done = all(s["lag_events"] == 0 for s in status) and outbox["pending"] == 0
            return (status, outbox) if done else None

        status, outbox = wait_for(settled, 120, "the daemon to catch up and drain the outbox")
        metrics = scrape(port)
        for s in status:
            assert metrics[f'cqrsctl_projection_position{{projection="{s["name"]}"}}'] == s["position"]
            assert metrics[f'cqrsctl_projection_lag_events{{projection="{s["name"]}"}}'] == 0
            assert metrics[f'cqrsctl_projection_state{{projection="{s["name"]}",state="running"}}'] == 1
        assert metrics["cqrsctl_events_head_position"] == status[0]["head"]
        assert metrics['cqrsctl_outbox_messages{status="pending"}'] == 0
        assert metrics['cqrsctl_outbox_messages{status="dead"}'] == outbox["dead"]
        assert (
            metrics["cqrsctl_outbox_delivered_total"]
            == outbox["delivered"]
            == len(sink.read_text().splitlines())
        )
        assert metrics['cqrsctl_daemon_events_processed_total{worker="projections"}'] > 0
        assert [k for k in metrics if k.startswith("cqrsctl_daemon_heartbeat_age_seconds")]

        view = bank(store_url, "top", "--once", "--interval", "0.2s", "--format", "json").ok().json()
        assert view["head"] == status[0]["head"]
        assert {p["name"]: p["position"] for p in view["projections"]} == {
            s["name"]: s["position"] for s in status
        }
        assert all(p["owner"] and p["state"] == "running" for p in view["projections"])
        (d,) = view["daemons"]
        assert d["status"] == "running" and d["heartbeat_age_seconds"] < 30 and "projections" in d["holds"]
        assert view["outbox"]["pending"] == 0 and view["outbox"]["dead"] == outbox["dead"]
        assert isinstance(view["events_per_second"], float)
        table = bank(store_url, "top", "--once", "--interval", "0.1").ok().stdout
        assert "balances" in table and "daemons" in table and "outbox" in table
    finally:
        daemon.terminate()
        daemon.wait(20)
    assert "Traceback" not in log.read_text()


def test_metrics_address_is_checked(store_url: str) -> None:
    assert_error(bank(store_url, "daemon", "--once", "--metrics", "localhost"), 2, "HOST:PORT")
