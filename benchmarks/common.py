"""Shared by the benchmarks: a small project built in-process, and timing helpers."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import yaml  # noqa: E402

from dept_core.config import Config  # noqa: E402
from dept_core.config_io import validate  # noqa: E402


def smoke_raw(**train) -> dict:
    raw = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    raw["train"].update(train)
    return raw


def build_project(raw: dict, root: Path | None = None) -> tuple[Config, Path]:
    """prepare + tokenizers for `raw` (dept_core functions, no orchestration) -> (cfg, root)."""
    from dept_core import tokenizers as tk
    from dept_core.data import prepare, read_split, write_prepared
    from dept_core.layout import PREPARED, TOKENIZERS

    root = Path(root or tempfile.mkdtemp(prefix="dept-bench-"))
    cfg = validate(raw)
    write_prepared(prepare(cfg, root), root / PREPARED, set(cfg.data.heldout_sources))
    names = [s.name for s in cfg.data.sources]
    train = {n: read_split(root / PREPARED, n, "train") for n in names}
    val = {n: read_split(root / PREPARED, n, "val") for n in names}
    glob_spec, per_source = tk.plan(cfg, train)
    tk.assemble(cfg, train, val, tk.train_sentencepiece(glob_spec),
                {n: tk.train_sentencepiece(s) for n, s in per_source.items()},
                root / TOKENIZERS)
    return cfg, root


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
