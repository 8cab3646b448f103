"""`python -m bench`: run the measurements, print one table per backend, write RESULTS.md."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

from .core import BACKENDS, SIZES, Config, run_backend
from .db import DEFAULT_NATS_URL, DEFAULT_PG_DSN

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = ROOT / "bench" / "RESULTS.md"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from .measures import ALL

    names = [m.name for m in ALL]
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark cqrsctl against eventsourcing and the bare drivers, on SQLite and PostgreSQL.",
        epilog="Example: python -m bench --quick --backend all",
    )
    sizes = p.add_mutually_exclusive_group()
    sizes.add_argument(
        "--quick",
        action="store_const",
        dest="preset",
        const="quick",
        help="small sizes: the whole run on both backends in under 2 minutes",
    )
    sizes.add_argument(
        "--tiny",
        action="store_const",
        dest="preset",
        const="tiny",
        help="smoke-test sizes: seconds, figures meaningless",
    )
    sizes.add_argument(
        "--sizes",
        dest="preset",
        choices=sorted(SIZES),
        help="a size preset: tiny, quick, default (the default, < 15 min) or target (the spec's sizes)",
    )
    p.add_argument(
        "--size",
        action="append",
        default=[],
        metavar="KEY=N",
        help=f"override one size (keys: {', '.join(SIZES['default'])})",
    )
    p.add_argument("--backend", choices=[*BACKENDS, "all"], default="all")
    p.add_argument("--only", metavar="NAME[,NAME]", help=f"run only these measurements: {', '.join(names)}")
    p.add_argument(
        "--runs", type=int, default=3, help="runs per contender; each figure is their median (default 3)"
    )
    p.add_argument(
        "--json", action="store_true", help="print the results as one JSON document instead of tables"
    )
    p.add_argument(
        "--results",
        default=str(DEFAULT_RESULTS),
        metavar="PATH",
        help="where to write the Markdown results ('-' not to write them; default bench/RESULTS.md)",
    )
    p.add_argument(
        "--pg-dsn",
        default=os.environ.get("CQRSCTL_BENCH_PG_DSN", DEFAULT_PG_DSN),
        help="PostgreSQL to run on; each run gets its own schema there (env CQRSCTL_BENCH_PG_DSN)",
    )
    p.add_argument(
        "--nats-url",
        default=os.environ.get("CQRSCTL_BENCH_NATS_URL", DEFAULT_NATS_URL),
        help="NATS server with JetStream (env CQRSCTL_BENCH_NATS_URL)",
    )
    p.add_argument("--workdir", help="directory for the SQLite files of the runs (default: a temporary one)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    args.preset = args.preset or "default"
    if args.runs < 1:
        p.error("--runs must be at least 1")
    args.sizes = dict(SIZES[args.preset])
    for item in args.size:
        key, sep, value = item.partition("=")
        if not sep or key not in args.sizes or not value.replace("_", "").isdigit():
            p.error(f"--size expects KEY=N with KEY one of {', '.join(args.sizes)}; got {item!r}")
        args.sizes[key] = int(value)
    args.measurements = ALL
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            p.error(f"unknown measurement {unknown[0]!r} (known: {', '.join(names)})")
        args.measurements = [m for m in ALL if m.name in wanted]
    return args


def main(argv: list[str] | None = None) -> int:
    from . import report

    args = parse_args(argv)
    backends = list(BACKENDS) if args.backend == "all" else [args.backend]
    workdir = Path(tempfile.mkdtemp(prefix="cqrsctl-bench-", dir=args.workdir))
    config = Config(args.sizes, args.pg_dsn, args.nats_url, workdir, args.runs, verbose=not args.quiet)
    try:
        results = [run_backend(b, args.measurements, config) for b in backends]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    facts = report.machine_facts(config, backends)
    command = "python -m bench " + shlex.join(argv if argv is not None else sys.argv[1:])
    if args.json:
        doc = report.to_json(results, args.measurements, config, facts, args.preset)
        print(json.dumps(doc, indent=2, ensure_ascii=False))
    else:
        report.render_terminal(results, args.measurements, config.runs)
    if args.results != "-":
        text = report.render_markdown(results, args.measurements, config, facts, args.preset, command.strip())
        Path(args.results).write_text(text, encoding="utf-8")
        if not args.quiet:
            print(f"results written to {args.results}", file=sys.stderr)
    failed = any(o.status == "error" for r in results for outs in r.outcomes.values() for o in outs.values())
    return 1 if failed else 0
