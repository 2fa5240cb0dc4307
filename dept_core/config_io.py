"""Reading params files: YAML, `key=value` overrides and validation against the schema in
`dept_core.config`, with errors that name the file, the key and the value (`load_config` is
the entry point the rest of the code uses). Imports go one way: this module imports the
schema, the schema never imports this module."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from dept_core.config import Config
from dept_core.errors import ConfigError


def _format_errors(origin: str, err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not _is_union_tag(p))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            parts.append(f"{loc}: unknown key")
        elif e["type"] == "missing":
            parts.append(f"{loc}: required key missing")
        else:
            value = e.get("input")
            shown = "" if isinstance(value, (dict, list)) else f" (got {value!r})"
            parts.append(f"{loc}: {msg}{shown}" if loc else f"{msg}")
    return f"{origin}: " + "; ".join(parts)


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and part in {"embedded", "files", "hf"}


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.rounds=3` -> (['train', 'rounds'], 3); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected key=value")
    key, raw = text.split("=", 1)
    if not re.fullmatch(r"[A-Za-z_][\w]*(\.[\w]+)*", key):
        raise ConfigError(f"override '{text}': bad key '{key}'")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML ({exc})") from None
    return key.split("."), value


def apply_override(raw: dict, path: list[str], value: Any) -> None:
    node = raw
    for part in path[:-1]:
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"override {'.'.join(path)}: '{part}' is not a section")
        node = node.setdefault(part, {})
    if isinstance(node, list) and path[-1].isdigit() and int(path[-1]) < len(node):
        node[int(path[-1])] = value
    elif isinstance(node, dict):
        node[path[-1]] = value
    else:
        raise ConfigError(f"override {'.'.join(path)}: not a section")


def read_yaml(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {first}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return raw


def load_config(path: Path | str = "params.yaml", overrides: list[str] | None = None) -> Config:
    """Read, override (`key=value`, YAML values) and validate a params file."""
    raw = read_yaml(Path(path))
    for text in overrides or []:
        keys, value = parse_override(text)
        apply_override(raw, keys, value)
    return validate(raw, origin=str(path))


def validate(raw: dict, origin: str = "params") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(origin, err)) from None
