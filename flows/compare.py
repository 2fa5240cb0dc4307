"""compare: the variants side by side -> results/compare/{summary.json,summary.md,*.png}.

    python -m flows.compare [--params params.yaml]
"""

from __future__ import annotations

import json

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from dept_core import report
from dept_core.atomic import atomic_dir, write_json, write_text
from dept_core.errors import DataError
from dept_core.layout import RESULTS
from flows.common import load
from tasks.common import NO_CACHE


@task(name="compare", **NO_CACHE)
def compare_task(root, variants: list[str]) -> dict:
    metrics = {}
    for v in variants:
        path = root / RESULTS / "pretrain" / v / "metrics.json"
        if not path.is_file():
            raise DataError(f"{path}: missing — run `dept train --variant {v}` first")
        metrics[v] = json.loads(path.read_text())
    tests = {}
    for v in variants:
        path = root / RESULTS / "evaluate" / v / "metrics.json"
        if path.is_file():
            tests[v] = json.loads(path.read_text())
    summary = report.summarise(metrics, tests)
    out = root / RESULTS / "compare"
    out.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out / "plots") as tmp:
        report.plot(metrics, tmp)
    write_text(out / "curves.csv", report.curves_csv(metrics))
    write_text(out / "bpb_per_round.csv", report.wide_csv(metrics, "val_bpb_mean"))
    write_text(out / "comm_per_round.csv", report.wide_csv(metrics, "cumulative_comm_bytes"))
    write_text(out / "summary.md", report.markdown(summary))
    write_json(out / "summary.json", summary)
    return summary


@flow(name="compare")
def compare_flow(params: str = "params.yaml", overrides: list[str] | None = None,
                 root: str | None = None) -> dict:
    cfg, root_path = load(params, overrides, root)
    summary = compare_task(root_path, cfg.train.variants)
    table = report.markdown(summary)
    create_markdown_artifact(table, key="dept-comparison", description="DEPT variants")
    get_run_logger().info("comparison:\n%s", table)
    return summary


if __name__ == "__main__":
    import sys

    from flows.cli import main

    main(["compare", *sys.argv[1:]])
