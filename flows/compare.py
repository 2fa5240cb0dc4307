"""compare: the variants side by side -> results/compare/{summary.json,summary.md,*.csv,plots/}.

    python -m flows.compare [--params params.yaml]

Reads results/pretrain/<variant>/metrics.json (required) and results/evaluate/<variant>/
metrics.json (where present, `random` included). The summary, CSVs and plots are also logged
to the execution's MLflow parent run and the table is a Prefect markdown artefact.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from dept_core import layout, report
from flows.common import load, run_stage, stage_parser
from tasks.compare import compare_task, log_comparison
from tasks.runs import execution_run
from tasks.tracking import check_tracking_uri


@flow(name="compare")
def compare_flow(params: str = "params.yaml", overrides: list[str] | None = None,
                 root: str | None = None, mlflow_run_id: str | None = None) -> dict:
    cfg, root_path = load(params, overrides, root)
    summary = compare_task(root_path, cfg)
    if mlflow_run_id is None:  # a stage of its own: onto the execution's parent run
        with execution_run(root_path, cfg) as (client, run_id):
            log_comparison(client, run_id, root_path)
    table = report.markdown(summary)
    create_markdown_artifact(table, key="dept-comparison", description="DEPT variants")
    get_run_logger().info("comparison:\n%s", table)
    return summary


def print_comparison(_: object = None) -> None:
    """The comparison table on stdout, and where to look next."""
    from pathlib import Path

    print((layout.compare_dir(Path.cwd()) / "summary.md").read_text())
    print("Open the MLflow UI to compare the runs:  dept ui   (or: make ui)  "
          "then browse http://127.0.0.1:5000")


def main(argv: list[str] | None = None) -> int:
    args = stage_parser("python -m flows.compare", __doc__).parse_args(argv)
    return run_stage("compare", args, lambda: print_comparison(
        compare_flow(params=args.params, overrides=args.overrides)),
        check=check_tracking_uri)


if __name__ == "__main__":
    raise SystemExit(main())
