"""evaluate: everything the paper measures after pre-training, for one variant.

    python -m flows.evaluate --variant spec [--params params.yaml]
    python -m flows.evaluate --variant random       # the untrained reference (floor)

Writes results/evaluate/<variant>/metrics.json and records it (metrics per source,
plasticity curves with their steps, downstream scores) in the variant's MLflow run, the one
its pre-training logged to, under the execution's parent run (`random`: a run of its own).
"""

from __future__ import annotations

from prefect import flow

from dept_core import layout
from dept_core.errors import DataError
from dept_core.variants import REFERENCE
from flows.common import (add_seed_arg, add_variant_arg, backend_overrides, load, run_stage,
                          stage_parser)
from flows.lock import holds_project
from tasks.evaluate import evaluate_task
from tasks.runs import execution_run
from tasks.tracking import check_tracking_uri


@flow(name="evaluate", flow_run_name="evaluate-{variant}")
@holds_project
def evaluate_flow(variant: str, params: str = "params.yaml",
                  overrides: list[str] | None = None, root: str | None = None) -> dict:
    cfg, root_path = load(params, overrides, root)
    if variant != REFERENCE:
        models = layout.models_dir(root_path, variant, cfg.train.seed)
        if not models.is_dir():
            raise DataError(f"{models}: missing — run `dept train --variant {variant}` first")
    with execution_run(root_path, cfg) as (_, parent_id):  # the run its pretrain stage made
        return evaluate_task(cfg, variant, root_path, parent_id)


def main(argv: list[str] | None = None) -> int:
    p = stage_parser("python -m flows.evaluate", __doc__)
    add_variant_arg(p, reference=True)
    add_seed_arg(p)
    args = p.parse_args(argv)
    backend_overrides(args)
    return run_stage("evaluate", args,
                     lambda: evaluate_flow(args.variant, args.params, args.overrides),
                     check=check_tracking_uri)


if __name__ == "__main__":
    raise SystemExit(main())
