"""Find the user's App from `module:attr` or `path/to/file.py[:attr]`."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from .app import App
from .errors import AppError


def _import_file(path: Path) -> ModuleType:
    name = f"cqrsctl_app_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise AppError(f"cannot load app file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def load_app(ref: str) -> App:
    """Import the app named by `ref`; any failure is one AppError naming what went wrong."""
    target, _, attr = ref.partition(":")
    if target.endswith(".py") and ":" in ref[2:] and len(target) == 1:  # a Windows drive letter
        target, _, attr = ref[2:].partition(":")
        target = ref[:2] + target
    try:
        if target.endswith(".py") or "/" in target:
            path = Path(target)
            if not path.is_file():
                raise AppError(f"app file not found: {target}")
            module = _import_file(path.resolve())
        else:
            if str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))
            module = importlib.import_module(target)
    except AppError:
        raise
    except ModuleNotFoundError as exc:
        raise AppError(f"cannot import app {ref!r}: no module named {exc.name!r}") from None
    except Exception as exc:
        raise AppError(f"app {ref!r} failed to import: {type(exc).__name__}: {exc}") from None
    if attr:
        app = getattr(module, attr, None)
        if app is None:
            raise AppError(f"app {ref!r}: module has no attribute {attr!r}")
    else:
        found = [v for v in vars(module).values() if isinstance(v, App)]
        if len(found) != 1:
            raise AppError(
                f"app {ref!r}: expected one App in the module, found {len(found)}; name it as module:attr"
            )
        app = found[0]
    if not isinstance(app, App):
        raise AppError(f"app {ref!r} is a {type(app).__name__}, not a cqrsctl App")
    return app
