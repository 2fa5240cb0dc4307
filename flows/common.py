"""What every flow does first: resolve the project root and load the configuration."""

from __future__ import annotations

from pathlib import Path

from dept_core.config import Config, load_config


def load(params: str | Path = "params.yaml", overrides: list[str] | None = None,
         root: str | Path | None = None) -> tuple[Config, Path]:
    root = Path(root) if root is not None else Path.cwd()
    params = Path(params)
    if not params.is_absolute():
        params = root / params
    return load_config(params, overrides), root
