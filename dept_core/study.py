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

from dept_core.config import Config, load_config, read_yaml
from dept_core.errors import ConfigError
from dept_core.variants import BASELINE, REFERENCE

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


# ------------------------------------------------------------------------------ report ----
def merged(choice: dict[str, Cell], pretrain: dict, evals: dict) -> tuple[dict, dict]:
    """Each variant's results from its own chosen cell (the untrained body from STD's)."""
    metrics = {v: pretrain[c.id][v] for v, c in choice.items()}
    ev = {v: evals[c.id][v] for v, c in choice.items() if v in evals.get(c.id, {})}
    ref_cell = choice.get(BASELINE) or next(iter(choice.values()))
    if REFERENCE in evals.get(ref_cell.id, {}):
        ev[REFERENCE] = evals[ref_cell.id][REFERENCE]
    return metrics, ev


def rows_of(spec: StudySpec, cell: Cell, summary: dict, choice: dict[str, Cell]) -> list[dict]:
    """The study table's rows for one setting: every variant at its own best tuning point."""
    ev = summary.get("evaluation", {})
    tables = ev.get("tables", {})
    rows = []
    for v in summary["pretraining"]["variants"]:
        row = {"setting": cell.setting_label,
               "group": label({k: x for k, x in cell.setting.items() if k not in spec.budget}),
               "tokens_per_source": summary["settings"]["tokens_per_source"],
               "variant": v, "chosen": choice[v].tune,
               "val_bpb": summary["pretraining"]["variants"][v]["val_bpb_mean"]}
        for proto in ("as_trained", "cpt_fresh"):
            cellv = tables.get(proto, {}).get(v, {}).get("id", {})
            if "mean" in cellv:
                row[f"{proto}_bpb"] = cellv["mean"]
            if "vs_std_pct" in cellv:
                row[f"{proto}_vs_std"] = cellv["vs_std_pct"]
                row[f"{proto}_verdict"] = cellv["verdict"]
        if v in ev.get("plasticity", {}):
            row["plasticity_auc"] = ev["plasticity"][v]["auc"]
        if v in ev.get("downstream", {}):
            row["downstream_accuracy"] = ev["downstream"][v]["accuracy"]
        rows.append(row)
    return rows


def study_verdict(rows: list[dict]) -> list[str]:
    """Per variant and protocol: where it beats STD, ties, or loses, with the intervals."""
    out = []
    variants = [v for v in dict.fromkeys(r["variant"] for r in rows) if v != BASELINE]
    for proto, name in (("as_trained", "as trained"), ("cpt_fresh", "after CPT (fresh emb.)")):
        for v in variants:
            cells = [r for r in rows if r["variant"] == v and f"{proto}_vs_std" in r]
            if not cells:
                continue
            by_word: dict[str, list[str]] = {}
            for r in sorted(cells, key=lambda r: (r["group"], r["tokens_per_source"])):
                iv = r[f"{proto}_vs_std"]
                where = (f"{tokens_text(r['tokens_per_source'])} tokens/source"
                         + (f", {r['group']}" if r["group"] != "base" else ""))
                by_word.setdefault(r[f"{proto}_verdict"], []).append(
                    f"{where} ({iv['value']:+.1f} % [{iv['low']:+.1f}, {iv['high']:+.1f}])")
            out.append(f"{v} vs STD, {name}, in distribution: " + "; ".join(
                f"{word} at {', '.join(where)}" for word, where in by_word.items()) + ".")
            trend = _trend(cells, proto)
            if trend:
                out.append(trend)
    return out


def _trend(cells: list[dict], proto: str) -> str | None:
    """Does the gap move with the budget beyond its intervals (smallest vs largest budget)?"""
    notes = []
    for group in dict.fromkeys(r["group"] for r in cells):
        g = sorted((r for r in cells if r["group"] == group),
                   key=lambda r: r["tokens_per_source"])
        if len(g) < 2:
            continue
        lo, hi = g[0][f"{proto}_vs_std"], g[-1][f"{proto}_vs_std"]
        if hi["low"] > lo["high"]:
            word = "moves in DEPT's favour"
        elif hi["high"] < lo["low"]:
            word = "moves in STD's favour"
        else:
            word = "does not move beyond the intervals"
        notes.append(f"from {tokens_text(g[0]['tokens_per_source'])} to "
                     f"{tokens_text(g[-1]['tokens_per_source'])} tokens/source"
                     + (f" ({group})" if group != "base" else "")
                     + f" the gap {word} ({lo['value']:+.1f} → {hi['value']:+.1f} %)")
    if not notes:
        return None
    return f"  {g[0]['variant']}: " + "; ".join(notes) + "."


def tokens_text(n: float) -> str:
    return f"{n / 1e6:.3g} M" if n >= 1e6 else f"{n / 1e3:.3g} k" if n >= 1e3 else f"{n:g}"


def fmt_iv(iv: dict | None, spec: str = ".3f") -> str:
    if not iv:
        return "—"
    return f"{format(iv['value'], spec)} [{format(iv['low'], spec)}, {format(iv['high'], spec)}]"


def markdown(study: dict) -> str:
    lines = [f"# Study `{study['name']}`", "",
             f"{study['cells']} cells ({len(study['settings'])} settings × "
             f"{study['tune_points']} tuning points), seeds {study['seeds']}; every variant at "
             f"its own best tuning point, chosen on validation bits/byte only.", "",
             "## Verdict", "", *[f"- {s}" if not s.startswith("  ") else f"  - {s.strip()}"
                                 for s in study["verdict"]], "",
             "## The gap to STD against the budget", "",
             "| setting | tokens/source | variant | chosen | as trained ID | vs STD % | "
             "CPT fresh ID | vs STD % | plasticity | downstream acc. |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in study["rows"]:
        vs = {p: (f"{fmt_iv(r[f'{p}_vs_std'], '+.1f')} {r[f'{p}_verdict']}"
                  if f"{p}_vs_std" in r else "—") for p in ("as_trained", "cpt_fresh")}
        chosen = ", ".join(f"{k.split('.')[-1]}={x}" for k, x in r["chosen"].items()) or "—"
        lines.append(f"| {r['setting']} | {tokens_text(r['tokens_per_source'])} | {r['variant']} "
                     f"| {chosen} | {fmt_iv(r.get('as_trained_bpb'))} | {vs['as_trained']} | "
                     f"{fmt_iv(r.get('cpt_fresh_bpb'))} | {vs['cpt_fresh']} | "
                     f"{fmt_iv(r.get('plasticity_auc'))} | "
                     f"{fmt_iv(r.get('downstream_accuracy'))} |")
    lines += ["", "Test bits/byte means over the training sources (in distribution) with paired "
              "95 % bootstrap intervals; 'vs STD %' positive = lower than STD on the same "
              "documents; plasticity = mean bits/byte over the adaptation curve on unseen "
              "sources (lower = more plastic). Plots against the budget: `plots/gap_*.png`, "
              "`plots/plasticity.png`, `plots/downstream.png`.", ""]
    return "\n".join(lines)


def gap_csv(rows: list[dict]) -> str:
    out = ["setting,group,tokens_per_source,variant,protocol,vs_std_pct,low,high,verdict"]
    for r in rows:
        for p in ("as_trained", "cpt_fresh"):
            if f"{p}_vs_std" in r:
                iv = r[f"{p}_vs_std"]
                out.append(f"\"{r['setting']}\",\"{r['group']}\",{r['tokens_per_source']},"
                           f"{r['variant']},{p},{iv['value']:.4f},{iv['low']:.4f},"
                           f"{iv['high']:.4f},{r[f'{p}_verdict']}")
    return "\n".join(out) + "\n"


def gap_long_csv(rows: list[dict], proto: str = "as_trained") -> str:
    """tokens_per_source,variant,value: the gap of one protocol for `dvc plots` (a variant
    of another setting group is named `variant (group)`)."""
    out = ["tokens_per_source,variant,value"]
    for r in rows:
        if f"{proto}_vs_std" in r:
            name = r["variant"] + ("" if r["group"] == "base" else f" ({r['group']})")
            out.append(f"{r['tokens_per_source']},\"{name}\",{r[f'{proto}_vs_std']['value']:.4f}")
    return "\n".join(out) + "\n"


# what `plot` draws: (file stem, row key, y label, title, is a gap to STD)
PANELS = (
    ("gap_as_trained", "as_trained_vs_std", "test bits/byte vs STD, % (positive = better)",
     "Gap to STD, as trained, in distribution", True),
    ("gap_cpt_fresh", "cpt_fresh_vs_std", "test bits/byte vs STD, % (positive = better)",
     "Gap to STD, after CPT (fresh emb.), in distribution", True),
    ("plasticity", "plasticity_auc", "mean bits/byte over adaptation (lower = more plastic)",
     "Plasticity on the unseen sources", False),
    ("downstream", "downstream_accuracy", "accuracy (higher = better)",
     "Downstream (topic classification, frozen body + probe)", False),
)


def plot(rows: list[dict], out_dir: Path) -> list[Path]:
    """One PNG per panel of PANELS against tokens per source: one line per variant and
    setting group (e.g. the data preset), 95 % intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for stem, key, ylabel, title, gap in PANELS:
        sel = [r for r in rows if key in r]
        if not sel:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for line in dict.fromkeys((r["variant"], r["group"]) for r in sel):
            pts = sorted((r for r in sel if (r["variant"], r["group"]) == line),
                         key=lambda r: r["tokens_per_source"])
            x = [r["tokens_per_source"] for r in pts]
            y = [r[key]["value"] for r in pts]
            err = [[r[key]["value"] - r[key]["low"] for r in pts],
                   [r[key]["high"] - r[key]["value"] for r in pts]]
            name = line[0] + ("" if line[1] == "base" else f" ({line[1]})")
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=name)
        if gap:
            ax.axhline(0, color="black", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("training tokens per source")
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_title(f"{title} (95 % intervals)", fontsize=10)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = Path(out_dir) / f"{stem}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
