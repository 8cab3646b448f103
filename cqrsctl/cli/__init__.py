"""The `cqrsctl` command line: parse, call the library, render, map errors to exit codes."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from ..config import resolve
from ..errors import CqrsError
from ..store import redact
from .runtime import Output, Runtime


class _Group(TyperGroup):
    """Catches library errors once, for every command: one line on stderr and the error's exit code."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except CqrsError as exc:
            rt = ctx.obj if isinstance(ctx.obj, Runtime) else None
            if rt is not None and rt.debug:
                raise
            message = str(exc)
            if rt is not None:
                message = message.replace(rt.settings.db, redact(rt.settings.db))
                rt.output.error(message)
            else:
                typer.echo(f"error: {message}", err=True)
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
            message = f"{type(exc).__name__}: {exc}"
            if rt is not None:
                message = message.replace(rt.settings.db, redact(rt.settings.db))
            typer.echo(f"error: internal error: {message} (run with --debug for a traceback)", err=True)
            raise typer.Exit(1) from None

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        # Bad global options fail here, before invoke: they get the same one-line treatment.
        try:
            return super().make_context(info_name, args, parent, **extra)
        except Exception as exc:
            if _is_parser_error(exc):
                _parser_error(exc)
            raise


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
    typer.echo(f"error: {' '.join(exc.format_message().split())}{hint}", err=True)
    raise typer.Exit(exc.exit_code) from None


app = typer.Typer(
    name="cqrsctl",
    cls=_Group,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="An event store and CQRS runner on SQLite or PostgreSQL.",
    epilog="Example: cqrsctl --db sqlite:///bank.db streams list",
)


@app.callback()
def _global(
    ctx: typer.Context,
    db: str = typer.Option(
        None, "--db", help="Database URL: sqlite:///path.db or postgresql://… (env CQRSCTL_DB)."
    ),
    app_ref: str = typer.Option(
        None, "--app", help="Your app: module:attr or path/to/file.py[:attr] (env CQRSCTL_APP)."
    ),
    json: bool = typer.Option(
        False, "--json", help="Machine output: one JSON document, or JSON Lines for streams."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only data and errors."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Say more about what happens."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
) -> None:
    settings = resolve(db, app_ref, Path.cwd())
    rt = Runtime(settings, Output(json=json, quiet=quiet, verbose=verbose), debug)
    ctx.obj = rt
    ctx.call_on_close(rt.close)
    rt.output.debug(f"database {redact(settings.db)} ({settings.source['db']})")


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


_register()


def main() -> None:
    app(prog_name="cqrsctl")


if __name__ == "__main__":  # pragma: no cover
    main()
