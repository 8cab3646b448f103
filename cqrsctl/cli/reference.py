"""The command-line reference (docs/cli.md), generated from the commands themselves.

`python -m cqrsctl.cli.reference docs/cli.md` rewrites the file; a test fails when the
file and the code disagree, so the reference cannot drift.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

HEADER = """# Command-line reference

Generated from the code by `python -m cqrsctl.cli.reference docs/cli.md`; a test fails
when this file and the commands disagree. Exit codes and configuration are described in
the [README](../README.md).

## Conventions

- **Global options** (`--db`, `--app`, `--format`, `--json`, `-q`, `-v`, `--debug`,
  `--actor`, `--log-format`) go
  before or after the command: `cqrsctl --json doctor` and `cqrsctl doctor --json` are the
  same. `cqrsctl --version` prints the version.
- **Output formats.** A command prints either *records* (zero or more objects of one kind:
  streams, events, messages, projections…) or *one result* (a report, a summary).
  `--format table` (the default) is for people. `--format json` prints one JSON document:
  an array of the records, or the result object. `--format jsonl` prints one JSON object per
  line: one line per record, or the result on one line. `--format csv` and `--format tsv`
  print a header and one row per record (a result is one row); nested values are JSON text,
  nulls are empty; TSV is not quoted: a tab, newline or backslash in a value is escaped with
  a backslash. `--json` is shorthand for `--format jsonl`; `--format` wins when both are given.
  `events --follow` and `outbox peek` print JSON Lines unless another machine format is chosen.
- **JSON shapes.** Keys are snake_case, numbers are numbers, timestamps are ISO 8601 UTC
  strings ending in `Z`, absent values are `null`. A record has the same keys in every
  machine format.
- **Errors.** One line on stderr (`error: …`); under `--format json`/`jsonl` (or `--json`)
  a JSON object instead: `{"error": "…", "exit_code": 6, "type": "NotFoundError"}`.
- **Lists** stop at `--limit`; on a terminal a list cut there ends with a line on stderr
  saying that more exist.
- **Durations** are written the same everywhere: `50` or `50s` (seconds, fractions allowed),
  `5m`, `2h`, `7d`, `2w`.
- **Logs** (what the daemon, catch-ups and rebuilds report as they work) go to stderr:
  warnings and errors by default, everything with `-v`, errors only with `-q`; the daemon
  logs everything unless `-q`. `--log-format text` (the default) writes a UTC timestamp and
  the message; `--log-format json` (or env `CQRSCTL_LOG_FORMAT=json`) one JSON object per
  line with `time`, `level`, `logger`, `message` and the event's own fields, for log
  collectors. Passwords and tokens of URLs are masked in both.
"""

_HIDDEN = {"help", "install_completion", "show_completion"}


def _root() -> Any:
    from . import app

    return typer.main.get_command(app)


def walk(command: Any | None = None, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command and group under `command` (the root when None), depth first, sorted by name."""
    command = _root() if command is None else command
    for name in sorted(getattr(command, "commands", {})):
        sub = command.commands[name]
        if getattr(sub, "hidden", False):
            continue
        yield (*path, name), sub
        yield from walk(sub, (*path, name))


def help_text(command: Any) -> str:
    return (command.help or "").strip()


def _paragraphs(command: Any) -> list[str]:
    return [" ".join(part.split()) for part in help_text(command).split("\n\n") if part.strip()]


def first_line(command: Any) -> str:
    """The summary: the help text's first paragraph, on one line."""
    paragraphs = _paragraphs(command)
    return paragraphs[0] if paragraphs else ""


def example(command: Any) -> str | None:
    """The `Example:` line of the help text (or of a group's epilog)."""
    for text in (help_text(command), command.epilog or ""):
        for line in text.splitlines():
            if line.strip().startswith("Example:"):
                return line.strip().removeprefix("Example:").strip()
    return None


def _params(command: Any, kind: str) -> list[Any]:
    return [
        p
        for p in command.params
        if p.param_type_name == kind and p.name not in _HIDDEN and not getattr(p, "hidden", False)
    ]


def _argument_name(param: Any) -> str:
    name = (param.metavar or param.name).upper()
    if getattr(param, "nargs", 1) == -1:
        name += "…"
    return name if param.required else f"[{name}]"


def usage(path: tuple[str, ...], command: Any) -> str:
    parts = ["cqrsctl", *path]
    if _params(command, "option"):
        parts.append("[OPTIONS]")
    if hasattr(command, "commands"):
        parts.append("COMMAND")
    parts.extend(_argument_name(p) for p in _params(command, "argument"))
    return " ".join(parts)


def _option_line(param: Any) -> str:
    names = ", ".join(f"`{n}`" for n in [*param.opts, *param.secondary_opts])
    text = (param.help or "").strip()
    default = param.default
    if not param.is_flag and default not in (None, (), [], False) and not callable(default):
        text += f" Default: `{default}`."
    return f"- {names}: {text}".rstrip()


def _section(path: tuple[str, ...], command: Any) -> list[str]:
    lines = [
        f"## `cqrsctl {' '.join(path)}`",
        "",
        first_line(command),
        "",
        "```",
        usage(path, command),
        "```",
        "",
    ]
    for paragraph in _paragraphs(command)[1:]:
        if not paragraph.startswith("Example:"):
            lines += [paragraph, ""]
    arguments = _params(command, "argument")
    if arguments:
        lines += ["Arguments:", ""]
        lines += [
            f"- `{_argument_name(p)}`: {(getattr(p, 'help', None) or '').strip()}".rstrip() for p in arguments
        ]
        lines.append("")
    options = _params(command, "option")
    if options:
        lines += ["Options:", ""]
        lines += [_option_line(p) for p in options]
        lines.append("")
    if hasattr(command, "commands"):
        lines += ["Commands:", ""]
        lines += [f"- `{name}`: {first_line(sub)}" for name, sub in sorted(command.commands.items())]
        lines.append("")
    shown = example(command)
    if shown:
        lines += ["Example:", "", "```console", f"$ {shown}", "```", ""]
    return lines


def reference_markdown() -> str:
    """The whole reference: global options, a summary table, then one section per command."""
    root = _root()
    lines = [HEADER, "## Global options", "", "```", "cqrsctl [GLOBAL OPTIONS] COMMAND …", "```", ""]
    lines += [_option_line(p) for p in _params(root, "option")]
    lines += ["", "## Commands", "", "| command | what it does |", "| --- | --- |"]
    commands = list(walk(root))
    lines += [f"| `{' '.join(path)}` | {first_line(cmd)} |" for path, cmd in commands]
    lines.append("")
    for path, cmd in commands:
        lines += _section(path, cmd)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    text = reference_markdown()
    if args:
        Path(args[0]).write_text(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
