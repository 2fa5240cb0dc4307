"""dept_pipeline: prepare -> tokenizers -> pretrain + evaluate every variant (and the random
reference) -> compare.

    python -m flows.pipeline [--params params.yaml] [--set key=value ...]

Variants run one after another: on a 2-core machine each already uses both cores. The
execution is one MLflow run (`pipeline <config digest>`) with one child per variant holding its
pre-training curves and its evaluation, so the UI compares them side by side.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from dept_core import report
from dept_core.variants import REFERENCE
from flows.common import load, run_stage, stage_parser
from flows.compare import compare_flow, print_comparison
from flows.prepare import prepare_flow
from flows.tokenizers import tokenizers_flow
from flows.lock import holds_project
from tasks.compare import log_comparison
from tasks.evaluate import evaluate_task
from tasks.runs import execution_name, execution_tags, mlflow_run
from tasks.tracking import check_tracking_uri
from tasks.train import pretrain_task


@flow(name="dept_pipeline")
@holds_project
def dept_pipeline(params: str = "params.yaml", overrides: list[str] | None = None,
                  root: str | None = None, parent_run_id: str | None = None,
                  data_ready: bool = False, run_name: str | None = None,
                  evaluate: bool = True) -> dict:
    """`data_ready`: data/prepared and data/tokenizers are in place (a study's cell shares
    them); `parent_run_id`: the MLflow run this execution nests under (a study's);
    `evaluate=False`: pre-training only (a study evaluates only the tuning points it chose
    on validation); `run_name`: the parent run's name (default `pipeline <config digest>`)."""
    cfg, root_path = load(params, overrides, root)
    if not data_ready:
        prepare_flow(params, overrides, str(root_path))
        tokenizers_flow(params, overrides, str(root_path))
    results = {}
    with mlflow_run(root_path, cfg, run_name or execution_name(cfg),
                    {"stage": "pipeline", **execution_tags(cfg, root_path)},
                    parent_run_id) as (client, parent_id):
        for seed in cfg.train.seeds:  # every seed on the same data and tokenizers
            run_cfg = cfg.with_train_seed(seed)
            for variant in cfg.train.variants:
                results[f"{variant}/seed-{seed}"] = pretrain_task(run_cfg, variant, root_path,
                                                                  parent_id)
                if evaluate:
                    evaluate_task(run_cfg, variant, root_path, parent_id)
            if evaluate and cfg.evaluate.reference:  # the untrained body: the floor of every comparison
                evaluate_task(run_cfg, REFERENCE, root_path, parent_id)
        summary = compare_flow(params, overrides, str(root_path), mlflow_run_id=parent_id)
        log_comparison(client, parent_id, root_path)
    # the table on the pipeline's own flow run too (Prefect UI: the run's Artifacts tab)
    create_markdown_artifact(report.markdown(summary), key="dept-comparison",
                             description="DEPT variants side by side")
    get_run_logger().info("done: %s", ", ".join(results))
    return results


def serve(name: str, cron: str, params: str = "params.yaml",
          overrides: list[str] | None = None) -> None:
    """Register the deployment `dept_pipeline/<name>` on a cron schedule (UTC) and execute
    its runs in this process until interrupted."""
    from pathlib import Path

    root = Path.cwd()
    dept_pipeline.serve(
        name=name, cron=cron, parameters={"params": str((root / params).resolve()),
                                          "overrides": overrides or [], "root": str(root)},
        description="DEPT: prepare -> tokenizers -> every variant -> compare",
        tags=["dept"],
    )


def main(argv: list[str] | None = None) -> int:
    args = stage_parser("python -m flows.pipeline", __doc__).parse_args(argv)
    return run_stage("run", args, lambda: print_comparison(
        dept_pipeline(params=args.params, overrides=args.overrides)),
        check=check_tracking_uri)


if __name__ == "__main__":
    raise SystemExit(main())
