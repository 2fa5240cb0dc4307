"""pretrain: DEPT rounds for one variant (glob, trim, spec, spec_opt) or the STD baseline.

    python -m flows.pretrain --variant spec [--params params.yaml] [--set key=value ...]
                             [--backend torchrun [--nproc N]]

A run killed at any point resumes from its last finished round when started again.
`backend="torchrun"` (or train.backend in params.yaml) runs the rounds through torchrun,
one rank per source group; a deployment of this flow (or of dept_pipeline with the config
key) then trains on ranks. `torchrun_args` (e.g. a multi-node rendezvous) replace the
default single-node `--standalone`.
"""

from __future__ import annotations

from typing import Literal

from prefect import flow

from flows.common import (add_backend_args, add_seed_arg, add_variant_arg, backend_overrides,
                          load, run_stage, stage_parser)
from flows.lock import holds_project
from tasks.train import pretrain_task
from tasks.runs import execution_run
from tasks.tracking import check_tracking_uri


@flow(name="pretrain", flow_run_name="pretrain-{variant}")
@holds_project
def pretrain_flow(variant: str, params: str = "params.yaml",
                  overrides: list[str] | None = None, root: str | None = None,
                  backend: Literal["inprocess", "torchrun"] | None = None,
                  torchrun_args: list[str] | None = None) -> dict:
    extra = [f"train.backend={backend}"] if backend else []
    cfg, root_path = load(params, [*(overrides or []), *extra], root)
    with execution_run(root_path, cfg) as (_, parent_id):  # the parent all stages share
        return pretrain_task(cfg, variant, root_path, parent_id, torchrun_args=torchrun_args)


def main(argv: list[str] | None = None) -> int:
    p = stage_parser("python -m flows.pretrain", __doc__)
    add_variant_arg(p)
    add_seed_arg(p)
    add_backend_args(p)
    args = p.parse_args(argv)
    backend_overrides(args)
    return run_stage("train", args,
                     lambda: pretrain_flow(args.variant, args.params, args.overrides),
                     check=check_tracking_uri)


if __name__ == "__main__":
    raise SystemExit(main())
