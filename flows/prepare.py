"""prepare: read every source, clean, de-duplicate, split, write data/prepared/.

    python -m flows.prepare [--params params.yaml] [--set key=value ...]
"""

from __future__ import annotations

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from dept_core import layout
from flows.common import load, run_stage, stage_parser
from flows.lock import holds_project
from tasks.data import read_source_task, write_prepared_task


@flow(name="prepare", task_runner=ThreadPoolTaskRunner(max_workers=2))
@holds_project
def prepare_flow(params: str = "params.yaml", overrides: list[str] | None = None,
                 root: str | None = None) -> dict:
    cfg, root_path = load(params, overrides, root)
    futures = {s.name: read_source_task.submit(s, cfg, root_path) for s in cfg.data.sources}
    prepared = {name: fut.result() for name, fut in futures.items()}  # all read before writing
    return write_prepared_task(prepared, layout.prepared(root_path),
                               cfg.data.heldout_sources)


def main(argv: list[str] | None = None) -> int:
    args = stage_parser("python -m flows.prepare", __doc__).parse_args(argv)
    return run_stage("prepare", args, lambda: prepare_flow(args.params, args.overrides))


if __name__ == "__main__":
    raise SystemExit(main())
