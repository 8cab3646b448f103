"""No function in the package is longer than MAX_LINES: a long function is a set of steps
that want names. The allowlist holds the ones still waiting for theirs; it fails too when
one of them is no longer long, so that it only ever shrinks."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "cqrsctl"
MAX_LINES = 60

# (file under cqrsctl/, qualified name): functions still over the limit.
ALLOWED: set[tuple[str, str]] = set()


def function_lengths() -> dict[tuple[str, str], int]:
    """Lines of every function and method, decorators left out (end_lineno - lineno + 1)."""
    found: dict[tuple[str, str], int] = {}

    def visit(node: ast.AST, file: str, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = prefix + child.name
                assert child.end_lineno is not None
                found[(file, name)] = child.end_lineno - child.lineno + 1
                visit(child, file, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, file, prefix + child.name + ".")
            else:
                visit(child, file, prefix)

    for path in sorted(PACKAGE.rglob("*.py")):
        visit(ast.parse(path.read_text(), str(path)), path.relative_to(PACKAGE).as_posix(), "")
    return found


def test_no_function_is_longer_than_the_limit() -> None:
    lengths = function_lengths()
    too_long = {key: n for key, n in lengths.items() if n > MAX_LINES and key not in ALLOWED}
    assert not too_long, "\n".join(
        f"cqrsctl/{file}: {name} has {n} lines (at most {MAX_LINES})"
        for (file, name), n in sorted(too_long.items())
    )


def test_the_allowlist_names_only_long_functions() -> None:
    lengths = function_lengths()
    stale = sorted(key for key in ALLOWED if lengths.get(key, 0) <= MAX_LINES)
    assert not stale, "no longer too long (or gone), take off ALLOWED: " + ", ".join(
        f"cqrsctl/{file}: {name}" for file, name in stale
    )
