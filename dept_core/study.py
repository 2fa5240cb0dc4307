"""A study: where does DEPT beat STD? The gap mapped over a grid of configurations × seeds.

A study file (YAML; `configs/study-cpu.yaml` is one) names a base parameters file, overrides
for every cell, a **grid** (any config keys, each with a list of values: the cartesian
product), a **tuning grid** (values every variant, STD included, is trained with; each
variant is reported at its own best point, chosen on the validation split only) and the
training seeds:

    name: cpu
    params: params.yaml
    set: ["train.variants=[glob,spec,std]"]
    grid: {train.rounds: [6, 24], model.size: [tiny, demo]}
    budget: [train.rounds]          # the grid keys that make the x axis (tokens per source)
    tune: {train.lr: [0.003, 0.006]}
    seeds: [0, 1]

A **cell** is one point of grid × tuning grid: one full pipeline run (every variant × every
seed, evaluation included) in a project directory of its own; cells that share the data
sections share prepared data and tokenizers. This module is pure (no Prefect, MLflow):
`flows/study.py` runs the cells; the functions here expand the grid, choose on validation and
build the report from the cells' outputs.

Beyond the paper (which reports one budget per model size): the study, the tuning protocol
and the verdict over budgets are this project's additions.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dept_core.config import Config
from dept_core.config_io import load_config, read_yaml
from dept_core.errors import ConfigError


DATA_SECTIONS = ("seed", "data", "prepare", "tokenizers")


class StudySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$",
                      description="the study's directory name (studies/<name>, results/study/<name>)")
    params: str = Field("params.yaml", description="base parameters, relative to the project root")
    set: list[str] = Field(default_factory=list, description="overrides applied to every cell")
    grid: dict[str, list[Any]] = Field(default_factory=dict,
                                       description="config key -> values (cartesian product)")
    budget: list[str] = Field(default_factory=list,
                              description="grid keys that change the budget (the x axis); the "
                              "other grid keys are settings compared line by line")
    tune: dict[str, list[Any]] = Field(default_factory=dict,
                                       description="config key -> values every variant is "
                                       "trained with; the best on validation is reported")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    bootstrap: int = Field(1000, ge=100, description="bootstrap replicates of the intervals")

    @field_validator("grid", "tune")
    @classmethod
    def _non_empty_lists(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            if not values:
                raise ValueError(f"{key}: give at least one value")
        return grid


def load_study(path: Path) -> StudySpec:
    path = Path(path)
    raw = read_yaml(path)  # a missing file, bad YAML, not a mapping: named errors
    try:
        spec = StudySpec.model_validate(raw)
    except ValidationError as exc:
        msgs = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(f"{path}: " + "; ".join(msgs)) from None
    unknown = [k for k in spec.budget if k not in spec.grid]
    if unknown:
        raise ConfigError(f"{path}: budget: {', '.join(unknown)} not in grid")
    both = set(spec.grid) & set(spec.tune)
    if both:
        raise ConfigError(f"{path}: {', '.join(sorted(both))} in both grid and tune")
    return spec


def _value_text(v: Any) -> str:
    """A grid value in a label: scalars as themselves, source lists by their names."""
    if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
        names = ",".join(str(x.get("name", "?")) for x in v)
        presets = {x.get("preset") for x in v if x.get("kind", "embedded") == "embedded"}
        # a heterogeneity axis reads as its preset: "multidomain(code,legal,...)"
        return f"{presets.pop()}({names})" if len(presets) == 1 and None not in presets \
            else names
    if isinstance(v, (list, dict)):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def label(point: dict[str, Any]) -> str:
    return " ".join(f"{k}={_value_text(v)}" for k, v in point.items()) or "base"


def digest(obj: Any, n: int = 12) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:n]


@dataclass
class Cell:
    setting: dict[str, Any]        # the grid point (budget and other settings)
    tune: dict[str, Any]           # the tuning point
    cfg: Config = field(repr=False)
    id: str = ""
    data_key: str = ""

    @property
    def setting_label(self) -> str:
        return label(self.setting)

    @property
    def label(self) -> str:
        return label({**self.setting, **self.tune})


def expand(spec: StudySpec, root: Path) -> list[Cell]:
    """Every cell of grid × tuning grid, validated (a bad key or value fails before any work,
    naming the cell), in grid order."""
    base = Path(root) / spec.params
    cells = []
    keys, tkeys = list(spec.grid), list(spec.tune)
    for values in itertools.product(*(spec.grid[k] for k in keys)):
        setting = dict(zip(keys, values))
        for tvalues in itertools.product(*(spec.tune[k] for k in tkeys)):
            tune = dict(zip(tkeys, tvalues))
            overrides = [*spec.set, *(f"{k}={json.dumps(v)}" for k, v in
                                      {**setting, **tune}.items()),
                         f"train.seeds={json.dumps(spec.seeds)}"]
            try:
                cfg = load_config(base, overrides)
            except ConfigError as exc:
                raise ConfigError(f"study {spec.name}, cell {label({**setting, **tune})}: "
                                  f"{exc}") from None
            raw = cfg.model_dump(mode="json")
            cells.append(Cell(setting, tune, cfg, digest(raw),
                              digest({k: raw[k] for k in DATA_SECTIONS})))
    return cells


def absolutise(raw: dict, root: Path) -> dict:
    """A cell's config as written into its own directory: relative file paths (a user's
    `kind: files` sources, local `hf` data files, the downstream task) made absolute against
    the project root, so the cell reads exactly what the project would."""
    root = Path(root).resolve()
    raw = json.loads(json.dumps(raw))

    def fix(p: str) -> str:
        return p if Path(p).is_absolute() else str(root / p)

    for src in raw["data"]["sources"]:
        if src.get("paths"):
            src["paths"] = [fix(p) for p in src["paths"]]
        if src.get("data_files"):
            src["data_files"] = [fix(p) for p in src["data_files"]]
    ds = raw.get("evaluate", {}).get("downstream", {})
    if ds.get("path") and (root / ds["path"]).exists():
        ds["path"] = fix(ds["path"])
    return raw


# ------------------------------------------------------------- choosing on validation ----
def validation_score(by_seed: dict[int, dict]) -> float:
    """Mean over seeds of the last round's mean validation bits/byte (inf if incomplete)."""
    vals = [m["final"]["val_bpb_mean"] for m in by_seed.values()]
    if not vals or any(v is None for v in vals):
        return math.inf
    return sum(vals) / len(vals)


def choose(cells: list[Cell], pretrain: dict[str, dict[str, dict[int, dict]]]
           ) -> dict[str, dict[str, Cell]]:
    """Per setting, per variant: the cell (tuning point) with the lowest validation score.

    `pretrain[cell.id][variant][seed]` is that run's metrics.json (pre-training only: these
    hold validation numbers and nothing from the test split, so test data cannot influence
    a choice). Ties go to the first point in grid order."""
    out: dict[str, dict[str, Cell]] = {}
    for cell in cells:
        best = out.setdefault(cell.setting_label, {})
        for v, by_seed in pretrain[cell.id].items():
            if v not in best or validation_score(by_seed) < \
                    validation_score(pretrain[best[v].id][v]):
                best[v] = cell
    return out
