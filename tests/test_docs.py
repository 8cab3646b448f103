"""Documentation that cannot drift: help texts, the generated CLI reference, the README's
command and exit-code tables."""

from __future__ import annotations

import re
from typing import Any

import pytest
from helpers import ROOT, cli

from cqrsctl import errors
from cqrsctl.cli.reference import example, first_line, reference_markdown, walk

COMMANDS = list(walk())
LEAVES = [(path, cmd) for path, cmd in COMMANDS if not hasattr(cmd, "commands")]
README = ROOT / "README.md"
CLI_DOC = ROOT / "docs" / "cli.md"


def ids(items: list[tuple[tuple[str, ...], Any]]) -> list[str]:
    return [" ".join(path) for path, _ in items]


def test_there_are_commands() -> None:
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"init", "append", "streams list", "streams show", "events", "export", "import", "doctor"} <= names
    assert {"dispatch", "replay", "snapshots list", "snapshots take", "snapshots delete", "query"} <= names


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=ids(COMMANDS))
def test_every_command_and_group_has_help(path: tuple[str, ...], command: Any) -> None:
    summary = first_line(command)
    assert summary, f"`cqrsctl {' '.join(path)}` has no help text"
    assert summary.endswith((".", ")")), (
        f"`cqrsctl {' '.join(path)}`: the summary should be a sentence: {summary!r}"
    )


@pytest.mark.parametrize(("path", "command"), LEAVES, ids=ids(LEAVES))
def test_every_command_has_an_example(path: tuple[str, ...], command: Any) -> None:
    shown = example(command)
    assert shown, f"`cqrsctl {' '.join(path)}` has no `Example:` line in its help"
    assert shown.startswith("cqrsctl "), shown
    # The example uses the command it documents.
    assert " ".join(path) in shown, f"the example of `cqrsctl {' '.join(path)}` runs something else: {shown}"


@pytest.mark.parametrize(("path", "command"), LEAVES, ids=ids(LEAVES))
def test_every_option_has_help(path: tuple[str, ...], command: Any) -> None:
    for param in command.params:
        if param.param_type_name == "option" and param.name != "help":
            assert (param.help or "").strip(), (
                f"`cqrsctl {' '.join(path)}` option {param.opts[0]} has no help"
            )


@pytest.mark.parametrize(("path", "command"), LEAVES[:3] + [p for p in LEAVES if p[0] == ("streams", "show")])
def test_help_output_shows_the_example(path: tuple[str, ...], command: Any) -> None:
    result = cli(*path, "--help").ok()
    assert "Example:" in result.stdout
    assert first_line(command).split()[0] in result.stdout


def test_generated_reference_is_current() -> None:
    expected = reference_markdown()
    assert CLI_DOC.is_file(), "docs/cli.md is missing: run `python -m cqrsctl.cli.reference docs/cli.md`"
    assert CLI_DOC.read_text() == expected, (
        "docs/cli.md is out of date: run `python -m cqrsctl.cli.reference docs/cli.md`"
    )


def test_reference_covers_every_command() -> None:
    text = reference_markdown()
    for path, command in COMMANDS:
        assert f"## `cqrsctl {' '.join(path)}`" in text
        assert first_line(command) in text


def test_readme_links_the_reference() -> None:
    assert "(docs/cli.md)" in README.read_text()


def readme_command_table() -> list[str]:
    """The command column of the README's command table (`| \\`init [--sql]\\` | … |`)."""
    names = []
    for line in README.read_text().splitlines():
        match = re.match(r"^\| `([a-z][a-z-]*(?: [a-z][a-z-]*)?)[ `]", line)
        if match:
            names.append(match.group(1))
    return names


def test_readme_command_table_names_only_real_commands() -> None:
    real = {" ".join(path) for path, _ in COMMANDS}
    groups = {path[0] for path, _ in COMMANDS}
    listed = readme_command_table()
    assert listed, "the README has no command table"
    for name in listed:
        assert name in real or name.split()[0] in groups, f"the README lists `{name}`, which is no command"


def test_readme_command_table_lists_every_top_level_command() -> None:
    listed = {name.split()[0] for name in readme_command_table()}
    text = README.read_text()
    for path, _ in COMMANDS:
        if len(path) == 1:
            assert path[0] in listed or f"`{path[0]} " in text, (
                f"the README's command table misses `{path[0]}`"
            )


def error_classes() -> list[type[errors.CqrsError]]:
    return [
        cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, errors.CqrsError)
    ]


def readme_exit_codes() -> dict[int, str]:
    """code -> the whole table row, from the README's exit-code table."""
    rows: dict[int, str] = {}
    for line in README.read_text().splitlines():
        match = re.match(r"^\|\s*(\d+)\s*\|", line)
        if match:
            rows[int(match.group(1))] = line
    return rows


def test_exit_codes_are_distinct_per_meaning() -> None:
    by_code: dict[int, list[str]] = {}
    for cls in error_classes():
        by_code.setdefault(cls.exit_code, []).append(cls.__name__)
    # Only the kinds of write conflict share a code.
    shared = {code: sorted(names) for code, names in by_code.items() if len(names) > 1}
    assert shared == {4: ["CommandRaceError", "ConcurrencyError", "ConflictError", "DuplicateEventError"]}


@pytest.mark.parametrize("cls", error_classes(), ids=lambda c: c.__name__)
def test_readme_documents_every_exit_code(cls: type[errors.CqrsError]) -> None:
    rows = readme_exit_codes()
    assert cls.exit_code in rows, f"the README's exit-code table has no row for {cls.exit_code}"
    assert f"`{cls.__name__}`" in rows[cls.exit_code], (
        f"the README's row for exit code {cls.exit_code} does not name `{cls.__name__}`"
    )


def test_every_error_class_has_a_docstring() -> None:
    for cls in error_classes():
        assert (cls.__doc__ or "").strip(), cls.__name__
