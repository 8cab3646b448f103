"""Turning outcomes into tables (terminal, Markdown, JSON), with the machine's facts."""

from __future__ import annotations

import os
import platform
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from .core import COLUMNS, BackendResult, Config, Measurement, Outcome

ROOT = Path(__file__).resolve().parents[1]
BACKEND_TITLES = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
HEADERS = ["measurement", "unit", "raw", "eventsourcing", "cqrsctl", "cqrsctl/eventsourcing", "cqrsctl/raw"]
PACKAGES = ["cqrsctl", "eventsourcing", "psycopg", "orjson", "pydantic", "nats-py"]


# -- machine facts ----------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _postgres_version(dsn: str) -> str:
    try:
        import psycopg

        with psycopg.connect(dsn, connect_timeout=3) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            return str(row[0]) if row else "?"
    except Exception as exc:
        return f"not reachable ({type(exc).__name__})"


def _git() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "cqrsctl"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head} (with uncommitted changes in cqrsctl/)" if dirty else head


def machine_facts(config: Config, backends: list[str]) -> dict[str, str]:
    facts = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": f"{os.cpu_count()} × {_cpu_model()}",
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
    }
    if "postgres" in backends:
        facts["postgresql"] = _postgres_version(config.pg_dsn)
    for name in PACKAGES:
        try:
            facts[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            facts[name] = "not installed"
    facts["cqrsctl commit"] = _git()
    return facts


# -- cells --------------------------------------------------------------------------------------


def num(value: float) -> str:
    a = abs(value)
    if a >= 1000:
        return f"{value:,.0f}"
    if a >= 100:
        return f"{value:.0f}"
    if a >= 10:
        return f"{value:.1f}"
    if a >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _cell(outcome: Outcome | None, metric: str) -> tuple[str, float | None]:
    if outcome is None:
        return "—", None
    if outcome.status != "ok":
        return outcome.status, None
    stats = outcome.stats(metric)
    if stats is None:
        return "n/a", None
    median, low, high = stats
    if len(outcome.samples[metric]) == 1:
        return num(median), median
    return f"{num(median)} ({num(low)}–{num(high)})", median


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}×"


def table_rows(result: BackendResult, measurements: list[Measurement]) -> list[dict[str, Any]]:
    """One dict per table line: texts for people and medians for machines."""
    lines = []
    for m in measurements:
        outcomes = result.outcomes.get(m.name, {})
        for row in m.rows_for(result.backend):
            texts, medians = {}, {}
            for column in COLUMNS:
                name = row.contender(column)
                texts[column], medians[column] = _cell(outcomes.get(name) if name else None, row.metric)
            lines.append(
                {
                    "measurement": m.name,
                    "label": row.label,
                    "unit": row.unit,
                    "higher_is_better": row.higher_is_better,
                    "contenders": {c: row.contender(c) for c in COLUMNS},
                    "text": texts,
                    "median": medians,
                    "samples": {
                        c: outcomes[n].samples.get(row.metric, [])
                        for c in COLUMNS
                        if (n := row.contender(c)) and n in outcomes
                    },
                    "ratio_eventsourcing": _ratio(medians["cqrsctl"], medians["eventsourcing"]),
                    "ratio_raw": _ratio(medians["cqrsctl"], medians["raw"]),
                }
            )
    return lines


def cells(line: dict[str, Any]) -> list[str]:
    unit = f"{line['unit']} {'↑' if line['higher_is_better'] else '↓'}"
    return [
        line["label"],
        unit,
        *(line["text"][c] for c in COLUMNS),
        line["ratio_eventsourcing"],
        line["ratio_raw"],
    ]


def problems(results: list[BackendResult]) -> list[str]:
    out = []
    for result in results:
        if not result.available:
            out.append(f"{BACKEND_TITLES[result.backend]}: {result.reason}")
        for measurement, outcomes in result.outcomes.items():
            for name, outcome in outcomes.items():
                if outcome.status != "ok":
                    out.append(
                        f"{BACKEND_TITLES[result.backend]} · {measurement} · {name}: {outcome.status} — {outcome.reason}"
                    )
    return out


# -- rendering ------------------------------------------------------------------------------------


def render_terminal(results: list[BackendResult], measurements: list[Measurement], runs: int) -> None:
    try:
        from rich import box
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(render_plain(results, measurements, runs))
        return
    console = Console(width=None if sys.stdout.isatty() else 200)
    for result in results:
        if not result.available:
            console.print(f"{BACKEND_TITLES[result.backend]}: skipped ({result.reason})")
            continue
        table = Table(
            title=f"{BACKEND_TITLES[result.backend]} — median of {runs} runs (min–max)",
            box=box.SIMPLE_HEAVY,
        )
        for i, header in enumerate(HEADERS):
            table.add_column(header, justify="left" if i < 2 else "right")
        for line in table_rows(result, measurements):
            table.add_row(*cells(line))
        console.print(table)
    for text in problems(results):
        console.print(f"• {text}", highlight=False)


def render_plain(results: list[BackendResult], measurements: list[Measurement], runs: int) -> str:
    out = []
    for result in results:
        out.append(f"{BACKEND_TITLES[result.backend]} — median of {runs} runs (min–max)")
        if not result.available:
            out.append(f"  skipped: {result.reason}\n")
            continue
        grid = [HEADERS] + [cells(line) for line in table_rows(result, measurements)]
        widths = [max(len(r[i]) for r in grid) for i in range(len(HEADERS))]
        for r in grid:
            out.append(
                "  ".join(
                    c.ljust(w) if i < 2 else c.rjust(w)
                    for i, (c, w) in enumerate(zip(r, widths, strict=True))
                )
            )
        out.append("")
    out += [f"* {t}" for t in problems(results)]
    return "\n".join(out)


def render_markdown(
    results: list[BackendResult],
    measurements: list[Measurement],
    config: Config,
    facts: dict[str, str],
    preset: str,
    command: str,
) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"`{command}` — {facts['date']}. Sizes: **{preset}** (listed below). Each figure is the median of"
        f" {config.runs} runs with (min–max); every run starts from a fresh database. Ratios divide"
        " cqrsctl's median by the other column's: for ↑ units above 1 means cqrsctl is faster, for ↓ units"
        " below 1 means it is faster (or smaller). What each contender does, and the durability each runs"
        " at: [bench/README.md](README.md).",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in facts.items() if k != "date"]
    lines += ["", "## Sizes", "", "| size | value |", "|---|---:|"]
    lines += [f"| {k} | {v:,} |" for k, v in config.sizes.items()]
    for result in results:
        lines += ["", f"## {BACKEND_TITLES[result.backend]}", ""]
        if not result.available:
            lines.append(f"Skipped: {result.reason}")
            continue
        lines.append("| " + " | ".join(HEADERS) + " |")
        lines.append("|---|---|" + "---:|" * (len(HEADERS) - 2))
        for line in table_rows(result, measurements):
            lines.append("| " + " | ".join(cells(line)) + " |")
        lines += ["", f"Run time for this backend: {result.seconds / 60:.1f} min."]
    found = problems(results)
    if found:
        lines += ["", "## Not available, or failed", ""]
        lines += [f"- {t}" for t in found]
    return "\n".join(lines) + "\n"


def to_json(
    results: list[BackendResult],
    measurements: list[Measurement],
    config: Config,
    facts: dict[str, str],
    preset: str,
) -> dict[str, Any]:
    return {
        "machine": facts,
        "preset": preset,
        "sizes": config.sizes,
        "runs": config.runs,
        "backends": {
            r.backend: {
                "available": r.available,
                "reason": r.reason,
                "seconds": round(r.seconds, 1),
                "rows": table_rows(r, measurements) if r.available else [],
                "contenders": {
                    m: {
                        n: {"status": o.status, "reason": o.reason, "samples": o.samples}
                        for n, o in outs.items()
                    }
                    for m, outs in r.outcomes.items()
                },
            }
            for r in results
        },
        "problems": problems(results),
    }
