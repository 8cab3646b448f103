"""The `cqrsctl` command line: parse, call the library, render, map errors to exit codes."""

from __future__ import annotations

import enum
import os
import sys
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from ..config import resolve
from ..errors import CqrsError
from ..redaction import redact
from ..store.base import default_actor
from . import logs
from .runtime import Output, Runtime, error_json, scrub_urls


class LogFormat(enum.StrEnum):
    text = "text"
    json = "json"


class Format(enum.StrEnum):
    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"
    tsv = "tsv"


# Global options, accepted before or after the command (see _hoist_globals).
_GLOBAL_VALUED = {"--db", "--app", "--format", "--actor", "--log-format"}
_GLOBAL_FLAGS = {"--json", "--quiet", "-q", "--verbose", "-v", "--debug"}


def _declares(command: Any, name: str) -> Any:
    for param in getattr(command, "params", ()):
        if name in getattr(param, "opts", ()) or name in getattr(param, "secondary_opts", ()):
            return param
    return None


def _hoist_globals(root: Any, args: list[str]) -> list[str]:
    """Move global options found after the command to the front, where the parser expects them.

    Walks the command path so that a command's own options (and their values) stay where
    they are: `cqrsctl append S T --data --json` keeps `--json` as the value of `--data`.
    """
    hoisted: list[str] = []
    kept: list[str] = []
    command = root
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            kept.extend(args[i:])
            break
        name, eq, _ = arg.partition("=")
        if arg.startswith("-") and len(arg) > 1:
            own = _declares(command, name)
            takes_value = (
                own is not None and not getattr(own, "is_flag", False) and not getattr(own, "count", False)
            )
            if own is None and command is not root and (name in _GLOBAL_VALUED or name in _GLOBAL_FLAGS):
                take = 2 if name in _GLOBAL_VALUED and not eq else 1
                hoisted.extend(args[i : i + take])
                i += take
                continue
            if own is None and command is root and name in _GLOBAL_VALUED and not eq:
                kept.extend(args[i : i + 2])
                i += 2
                continue
            kept.append(arg)
            if takes_value and not eq:
                kept.extend(args[i + 1 : i + 2])
                i += 1
        else:
            sub = getattr(command, "commands", {}).get(arg)
            if sub is not None:
                command = sub
            kept.append(arg)
        i += 1
    return hoisted + kept if hoisted else kept


def _machine_format(args: list[str]) -> bool:
    """Whether the global options (in front, once hoisted) ask for JSON: errors then go out as JSON."""
    fmt, json, i = None, False, 0
    while i < len(args) and args[i].startswith("-"):
        name, eq, value = args[i].partition("=")
        if name in _GLOBAL_VALUED and not eq:
            value = args[i + 1] if i + 1 < len(args) else ""
            i += 1
        if name == "--format":
            fmt = value
        json = json or name == "--json"
        i += 1
    return fmt in ("json", "jsonl") or (fmt is None and json)


def _error_line(message: str, exit_code: int, kind: str, machine: bool) -> None:
    if machine:
        typer.echo(error_json(message, exit_code, kind), err=True)
    else:
        typer.echo(f"error: {message}", err=True)


class _Group(TyperGroup):
    """Catches library errors once, for every command: one line on stderr and the error's exit code."""

    machine_errors = False

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        args = _hoist_globals(self, list(args))
        _Group.machine_errors = _machine_format(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except CqrsError as exc:
            rt = ctx.obj if isinstance(ctx.obj, Runtime) else None
            if rt is not None and rt.debug:
                raise
            message = _scrub(str(exc), rt)
            if rt is not None:
                rt.output.error(message, exc.exit_code, type(exc).__name__)
            else:
                _error_line(message, exc.exit_code, type(exc).__name__, _Group.machine_errors)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
        except BrokenPipeError:
            _quiet_stdout()  # the reader went away (`cqrsctl events | head`): stop without a word
            raise typer.Exit(1) from None
        except Exception as exc:
            if _is_parser_error(exc):
                _parser_error(exc)
            rt = ctx.obj if isinstance(ctx.obj, Runtime) else None
            if rt is not None and rt.debug:
                raise
            message = _scrub(f"{type(exc).__name__}: {exc}", rt)
            message = f"internal error: {message} (run with --debug for a traceback)"
            _error_line(message, 1, "InternalError", _Group.machine_errors)
            raise typer.Exit(1) from None

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        # Bad global options fail here, before invoke: they get the same one-line treatment.
        try:
            return super().make_context(info_name, args, parent, **extra)
        except Exception as exc:
            if _is_parser_error(exc):
                _parser_error(exc)
            raise


def _scrub(message: str, rt: Runtime | None) -> str:
    return rt.scrub(message) if rt is not None else scrub_urls(message)


def _quiet_stdout() -> None:
    # Python flushes stdout at exit and would complain about the closed pipe again.
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (tests)
        pass


def _is_parser_error(exc: BaseException) -> bool:
    """The command-line parser's own errors: unknown option, missing argument…"""
    return hasattr(exc, "format_message") and hasattr(exc, "exit_code")


def _parser_error(exc: Any) -> None:
    """One line on stderr instead of the parser's usage block, then the parser's exit code (2)."""
    if type(exc).__name__ == "NoArgsIsHelpError":
        raise exc  # `cqrsctl streams` alone: the help is already printed
    ctx = getattr(exc, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    _error_line(
        f"{' '.join(exc.format_message().split())}{hint}", exc.exit_code, "UsageError", _Group.machine_errors
    )
    raise typer.Exit(exc.exit_code) from None


app = typer.Typer(
    name="cqrsctl",
    cls=_Group,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="An event store and CQRS runner on SQLite or PostgreSQL.",
    epilog="Example: cqrsctl --db sqlite:///bank.db streams list",
)


def _print_version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"cqrsctl {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    ctx: typer.Context,
    db: str = typer.Option(
        None, "--db", help="Database URL: sqlite:///path.db or postgresql://… (env CQRSCTL_DB)."
    ),
    app_ref: str = typer.Option(
        None, "--app", help="Your app: module:attr or path/to/file.py[:attr] (env CQRSCTL_APP)."
    ),
    format: Format = typer.Option(
        None,
        "--format",
        help="Output: table (people), json (one document), jsonl (one object per line), csv or tsv.",
    ),
    json: bool = typer.Option(
        False, "--json", help="Shorthand for --format jsonl (--format wins when both are given)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only data and errors."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Say more about what happens."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
    log_format: LogFormat = typer.Option(
        LogFormat.text,
        "--log-format",
        envvar="CQRSCTL_LOG_FORMAT",
        help="The log on stderr: text (people) or json (one object per line, for log collectors).",
    ),
    actor: str = typer.Option(
        None,
        "--actor",
        help="Who runs this, for the operations journal (env CQRSCTL_ACTOR; default user@host).",
    ),
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_print_version, help="Print the version and exit."
    ),
) -> None:
    chosen = format.value if format is not None else None  # --format wins over --json
    settings = resolve(db, app_ref, Path.cwd())
    output = Output(chosen or ("jsonl" if json else "table"), quiet=quiet, verbose=verbose)
    rt = Runtime(settings, output, debug)
    rt.actor = actor or os.environ.get("CQRSCTL_ACTOR") or default_actor()
    ctx.obj = rt
    logs.install(log_format.value, quiet=quiet, verbose=verbose, scrub=rt.scrub)
    ctx.call_on_close(rt.close)
    rt.output.debug(f"database {redact(settings.db)} ({settings.source['db']})")
    if settings.app:
        rt.output.debug(f"app {settings.app} ({settings.source['app']})")


def _register() -> None:
    from . import app_cmds, store_cmds

    store_cmds.register(app)
    app_cmds.register(app)
    from . import saga_cmds

    saga_cmds.register(app)
    from . import outbox_cmds

    outbox_cmds.register(app)
    from . import projection_cmds

    projection_cmds.register(app)
    from . import daemon_cmds

    daemon_cmds.register(app)
    from . import contract_cmds

    contract_cmds.register(app)
    from . import top_cmds

    top_cmds.register(app)


_register()


def main() -> None:
    app(prog_name="cqrsctl")


if __name__ == "__main__":  # pragma: no cover
    main()
