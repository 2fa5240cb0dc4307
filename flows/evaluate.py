"""evaluate: test-split perplexity and bits/byte of a variant's exported models.

    python -m flows.evaluate --variant spec [--params params.yaml]
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task

from dept_core.atomic import write_json
from dept_core.errors import DataError
from dept_core.evaluate import evaluate_variant
from dept_core.layout import PREPARED, RESULTS
from flows.common import load
from tasks.common import NO_CACHE


@task(name="evaluate", task_run_name="evaluate-{variant}", **NO_CACHE)
def evaluate_task(cfg, variant: str, root) -> dict:
    models = root / RESULTS / "pretrain" / variant / "models"
    if not models.is_dir():
        raise DataError(f"{models}: missing — run `dept train --variant {variant}` first")
    result = evaluate_variant(models, root / PREPARED, cfg.data.train_sources,
                              cfg.data.heldout_sources, cfg.train.seq_len,
                              cfg.train.eval_tokens * 4)
    write_json(root / RESULTS / "evaluate" / variant / "metrics.json", result)
    get_run_logger().info("%s: test bits/byte in-distribution %s, out-of-distribution %s",
                          variant, result["in_distribution_bpb_mean"],
                          result["out_of_distribution_bpb_mean"])
    return result


@flow(name="evaluate", flow_run_name="evaluate-{variant}")
def evaluate_flow(variant: str, params: str = "params.yaml",
                  overrides: list[str] | None = None, root: str | None = None) -> dict:
    cfg, root_path = load(params, overrides, root)
    return evaluate_task(cfg, variant, root_path)


if __name__ == "__main__":
    import sys

    from flows.cli import main

    main(["evaluate", *sys.argv[1:]])
