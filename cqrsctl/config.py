"""Settings: flags beat environment beat config file beat defaults."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UsageError

DEFAULT_DB = "sqlite:///cqrsctl.db"


@dataclass
class Settings:
    db: str = DEFAULT_DB
    app: str | None = None
    source: dict[str, str] = field(default_factory=dict)  # setting -> where it came from


def read_config(directory: Path) -> tuple[dict[str, Any], str | None]:
    """The `cqrsctl.toml` table, or `[tool.cqrsctl]` of `pyproject.toml`, in `directory`."""
    for name, path_in_file in (("cqrsctl.toml", ()), ("pyproject.toml", ("tool", "cqrsctl"))):
        path = directory / name
        if not path.is_file():
            continue
        try:
            data: dict[str, Any] = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read {path}: {exc}") from None
        for key in path_in_file:
            data = data.get(key, {})
        if data or name == "cqrsctl.toml":
            return data, str(path)
    return {}, None


def resolve(db: str | None = None, app: str | None = None, directory: Path | None = None) -> Settings:
    config, config_path = read_config(directory or Path.cwd())
    settings = Settings()
    for key, flag, env in (("db", db, "CQRSCTL_DB"), ("app", app, "CQRSCTL_APP")):
        if flag:
            setattr(settings, key, flag)
            settings.source[key] = "flag"
        elif os.environ.get(env):
            setattr(settings, key, os.environ[env])
            settings.source[key] = f"env {env}"
        elif config.get(key):
            setattr(settings, key, str(config[key]))
            settings.source[key] = f"config {config_path}"
        else:
            settings.source[key] = "default"
    return settings
