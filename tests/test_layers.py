"""The layers of docs/architecture.md, read from the code: only the CLI imports typer and
rich; services and the CLI know one store interface (no backend tests, no backend
modules, no private store methods); no store interface grows past 15 abstract methods."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "cqrsctl"
ABOVE_THE_STORE = ("services", "cli")
MAX_ABSTRACT = 15
# Private names of other libraries that their own documentation tells callers to use.
FOREIGN_PRIVATE = {"os._exit", "self.ck.KafkaError._ALL_BROKERS_DOWN", "self.ck.KafkaError._PARTITION_EOF"}


def modules(*folders: str) -> list[tuple[str, ast.Module]]:
    """(path under cqrsctl/, parsed module) of every module in `folders`, or in the package."""
    paths = [p for f in folders for p in sorted((PACKAGE / f).rglob("*.py"))] or sorted(PACKAGE.rglob("*.py"))
    return [(p.relative_to(PACKAGE).as_posix(), ast.parse(p.read_text(), str(p))) for p in paths]


def imported(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


def test_only_the_cli_imports_typer_and_rich() -> None:
    found = [
        f"cqrsctl/{file} imports {name}"
        for file, tree in modules()
        if not file.startswith("cli/")
        for name in imported(tree)
        if name.split(".")[0] in ("typer", "rich")
    ]
    assert not found, found


def test_services_and_the_cli_never_ask_which_backend_they_have() -> None:
    found = []
    for file, tree in modules(*ABOVE_THE_STORE):
        for name in imported(tree):
            if "store.sqlite" in name or "store.postgres" in name:
                found.append(f"cqrsctl/{file} imports {name}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                if any(isinstance(s, ast.Attribute) and s.attr == "backend" for s in sides) and any(
                    isinstance(s, ast.Constant) for s in sides
                ):
                    found.append(f"cqrsctl/{file}:{node.lineno} {ast.unparse(node)}")
            if (
                isinstance(node, ast.Call)
                and ast.unparse(node.func) == "isinstance"
                and any(n in ast.unparse(node) for n in ("SQLite", "Postgres"))
            ):
                found.append(f"cqrsctl/{file}:{node.lineno} {ast.unparse(node)}")
    assert not found, found


def test_services_and_the_cli_call_no_private_method_of_another_object() -> None:
    found = []
    for file, tree in modules(*ABOVE_THE_STORE):
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and node.attr.startswith("_")):
                continue
            if node.attr.startswith("__") or (
                isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            ):
                continue
            if ast.unparse(node) not in FOREIGN_PRIVATE:
                found.append(f"cqrsctl/{file}:{node.lineno} {ast.unparse(node)}")
    assert not found, found


def test_no_store_interface_has_more_than_fifteen_abstract_methods() -> None:
    counts = {}
    for file, tree in modules("store"):
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            abstract = [
                f
                for f in cls.body
                if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
                and any(ast.unparse(d).endswith("abstractmethod") for d in f.decorator_list)
            ]
            if abstract:
                counts[f"{file}:{cls.name}"] = len(abstract)
    assert "store/base.py:Transaction" in counts and "store/base.py:Store" in counts, (
        counts
    )  # the scan sees them
    too_many = {name: n for name, n in counts.items() if n > MAX_ABSTRACT}
    assert not too_many, too_many
