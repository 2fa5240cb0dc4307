"""The compare task: every variant side by side (tables, curves, plots, verdict)."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task

from dept_core import faults, layout, report
from dept_core.config import Config
from dept_core.atomic import atomic_dir, write_json, write_text
from dept_core.errors import DataError
from dept_core.variants import REFERENCE
from tasks.common import NO_CACHE
from tasks.tracking import log_artifact

FILES = ("summary.md", "summary.json", "curves.csv", "bpb_per_round.csv", "comm_per_round.csv",
         "plasticity.csv")


def read_results(root: Path, variants: list[str], seeds: list[int]
                 ) -> tuple[dict, dict]:
    """Every variant's pre-training metrics (required) and evaluation (where present), per
    training seed; the untrained reference's evaluation too."""
    metrics, evals = {}, {}
    for v in variants:
        for s in seeds:
            path = layout.pretrain_metrics(root, v, s)
            if not path.is_file():
                raise DataError(f"{path}: missing — run `dept train --variant {v} --seed {s}` "
                                f"first")
            metrics.setdefault(v, {})[s] = json.loads(path.read_text())
    for v in [*variants, REFERENCE]:
        for s in seeds:
            path = layout.evaluate_metrics(root, v, s)
            if path.is_file():
                evals.setdefault(v, {})[s] = json.loads(path.read_text())
    return metrics, evals


@task(name="compare", **NO_CACHE)
def compare_task(root: Path, cfg: Config) -> dict:
    """Read every variant's results; write results/compare/ (summary, CSVs, plots)."""
    metrics, evals = read_results(root, cfg.train.variants, cfg.train.seeds)
    summary = report.comparison(metrics, evals, report.settings_of(cfg),
                                cfg.evaluate.bootstrap)
    out = layout.compare_dir(root)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out / "plots") as tmp:
        faults.no_space("compare")
        report.plot(metrics, tmp)
        report.plot_evaluation(summary, tmp)
    write_text(out / "curves.csv", report.curves_csv(metrics))
    write_text(out / "bpb_per_round.csv", report.long_csv(metrics, "val_bpb_mean"))
    write_text(out / "comm_per_round.csv", report.long_csv(metrics, "cumulative_comm_bytes"))
    write_text(out / "plasticity.csv", report.plasticity_csv(summary))
    write_text(out / "summary.md", report.markdown(summary))
    write_json(out / "summary.json", summary)
    return summary


def log_comparison(client, run_id: str, root: Path) -> None:
    """The comparison's files and plots as artefacts of an MLflow run."""
    out = layout.compare_dir(root)
    for name in FILES:
        log_artifact(client, run_id, str(out / name), "compare")
    log_artifact(client, run_id, str(out / "plots"), "compare/plots")
