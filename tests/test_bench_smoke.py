"""The benchmark harness runs end to end at tiny sizes on SQLite and reports numbers.

The figures of a tiny run mean nothing; this only keeps `python -m bench` working as the
library changes under it. It writes its results into the test's tmp_path, never over
bench/RESULTS.md.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_tiny_run_on_sqlite_reports_a_table_of_numbers(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--tiny", "--backend", "sqlite", "--runs", "1", "--json", "--quiet",
         "--results", str(results), "--workdir", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:] + proc.stdout[-2000:]

    doc = json.loads(proc.stdout)
    sqlite = doc["backends"]["sqlite"]
    assert sqlite["available"]
    rows = sqlite["rows"]
    measured = {row["measurement"] for row in rows}
    assert measured == {
        "dispatch",
        "batch",
        "append",
        "replay",
        "rebuild",
        "latency",
        "outbox",
        "writers",
        "shared",
    }
    for row in rows:
        raw = row["median"]["raw"]
        if row["measurement"] == "outbox" and raw is None:
            continue  # NATS may be absent here: that row is n/a, not a failure
        assert isinstance(raw, float) and raw > 0, row
    assert any(isinstance(row["median"]["cqrsctl"], float) for row in rows)

    text = results.read_text()
    assert "## SQLite" in text and "| measurement |" in text
    assert re.search(r"\| dispatch, synchronous=FULL \| commands/s ↑ \| [\d,.]+ \|", text)
    assert not list(tmp_path.glob("cqrsctl-bench-*")), "the run's scratch directory was left behind"
