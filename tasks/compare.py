"""The compare task: every variant side by side (tables, curves, plots, verdict)."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task

from dept_core import layout, report
from dept_core.atomic import atomic_dir, write_json, write_text
from dept_core.errors import DataError
from dept_core.variants import REFERENCE
from tasks.common import NO_CACHE

FILES = ("summary.md", "summary.json", "curves.csv", "bpb_per_round.csv", "comm_per_round.csv",
         "plasticity.csv")


@task(name="compare", **NO_CACHE)
def compare_task(root: Path, variants: list[str]) -> dict:
    """Read every variant's metrics (and evaluation, where present); write results/compare/."""
    metrics = {}
    for v in variants:
        path = layout.pretrain_metrics(root, v)
        if not path.is_file():
            raise DataError(f"{path}: missing — run `dept train --variant {v}` first")
        metrics[v] = json.loads(path.read_text())
    evals = {}
    for v in [*variants, REFERENCE]:
        path = layout.evaluate_metrics(root, v)
        if path.is_file():
            evals[v] = json.loads(path.read_text())
    summary = report.comparison(metrics, evals)
    out = layout.compare_dir(root)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out / "plots") as tmp:
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
        client.log_artifact(run_id, str(out / name), "compare")
    client.log_artifacts(run_id, str(out / "plots"), "compare/plots")
