"""pretrain: DEPT rounds for one variant (glob, trim, spec, spec_opt) or the STD baseline.

    python -m flows.pretrain --variant spec [--params params.yaml] [--set key=value ...]

A run killed at any point resumes from its last finished round when started again.
"""

from __future__ import annotations

from prefect import flow

from flows.common import load
from tasks.train import pretrain_task


@flow(name="pretrain", flow_run_name="pretrain-{variant}")
def pretrain_flow(variant: str, params: str = "params.yaml",
                  overrides: list[str] | None = None, root: str | None = None) -> dict:
    cfg, root_path = load(params, overrides, root)
    return pretrain_task(cfg, variant, root_path)


if __name__ == "__main__":
    import sys

    from flows.cli import main

    main(["train", *sys.argv[1:]])
