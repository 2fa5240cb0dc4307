"""compare: the variants side by side -> results/compare/{summary.json,summary.md,*.csv,plots/}.

    python -m flows.compare [--params params.yaml]

Reads results/pretrain/<variant>/metrics.json (required) and results/evaluate/<variant>/
metrics.json (where present, `random` included). The summary, CSVs and plots are also logged
to MLflow (the pipeline's run under `dept run`, else a run named `compare`) and the table is a
Prefect markdown artefact.
"""

from __future__ import annotations

import json

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from dept_core import report
from dept_core.atomic import atomic_dir, write_json, write_text
from dept_core.errors import DataError
from dept_core.evaluate import REFERENCE
from dept_core.layout import RESULTS
from flows.common import load
from tasks.common import NO_CACHE
from tasks.tracking import mlflow_run

FILES = ("summary.md", "summary.json", "curves.csv", "bpb_per_round.csv", "comm_per_round.csv",
         "plasticity.csv")


@task(name="compare", **NO_CACHE)
def compare_task(root, variants: list[str]) -> dict:
    metrics = {}
    for v in variants:
        path = root / RESULTS / "pretrain" / v / "metrics.json"
        if not path.is_file():
            raise DataError(f"{path}: missing — run `dept train --variant {v}` first")
        metrics[v] = json.loads(path.read_text())
    evals = {}
    for v in [*variants, REFERENCE]:
        path = root / RESULTS / "evaluate" / v / "metrics.json"
        if path.is_file():
            evals[v] = json.loads(path.read_text())
    summary = report.summarise(metrics, evals)
    out = root / RESULTS / "compare"
    out.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out / "plots") as tmp:
        report.plot(metrics, tmp)
        report.plot_evaluation(summary, tmp)
    write_text(out / "curves.csv", report.curves_csv(metrics))
    write_text(out / "bpb_per_round.csv", report.wide_csv(metrics, "val_bpb_mean"))
    write_text(out / "comm_per_round.csv", report.wide_csv(metrics, "cumulative_comm_bytes"))
    write_text(out / "plasticity.csv", report.plasticity_csv(summary))
    write_text(out / "summary.md", report.markdown(summary))
    write_json(out / "summary.json", summary)
    return summary


def log_to_mlflow(client, run_id: str, root) -> None:
    out = root / RESULTS / "compare"
    for name in FILES:
        client.log_artifact(run_id, str(out / name), "compare")
    client.log_artifacts(run_id, str(out / "plots"), "compare/plots")


@flow(name="compare")
def compare_flow(params: str = "params.yaml", overrides: list[str] | None = None,
                 root: str | None = None, mlflow_run_id: str | None = None) -> dict:
    cfg, root_path = load(params, overrides, root)
    summary = compare_task(root_path, cfg.train.variants)
    if mlflow_run_id is None:
        with mlflow_run(root_path, cfg, "compare", {"stage": "compare"}) as (client, run_id):
            log_to_mlflow(client, run_id, root_path)
    table = report.markdown(summary)
    create_markdown_artifact(table, key="dept-comparison", description="DEPT variants")
    get_run_logger().info("comparison:\n%s", table)
    return summary


if __name__ == "__main__":
    import sys

    from flows.cli import main

    main(["compare", *sys.argv[1:]])
