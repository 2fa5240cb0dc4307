"""tokenizers: the global SentencePiece model, per-source ones (SPEC-OPT), sub-vocabularies.

    python -m flows.tokenizers [--params params.yaml] [--set key=value ...]

Independent trainings are submitted concurrently to Prefect's task runner. Measured here:
SentencePiece's trainer holds the GIL, so two threads overlap little (1.1x on 2 cores), and a
ProcessPoolTaskRunner was slower end to end at the default size (17.9 s vs 12.8 s: process
start-up and pickling the texts outweigh the training). Threads stay the default.
"""

from __future__ import annotations

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from dept_core import tokenizers as tk
from dept_core import layout
from flows.common import load, run_stage, stage_parser
from flows.lock import holds_project
from tasks.tokenizers import read_splits_task, train_tokenizer_task, write_tokenizers_task


@flow(name="tokenizers", task_runner=ThreadPoolTaskRunner(max_workers=2))
@holds_project
def tokenizers_flow(params: str = "params.yaml", overrides: list[str] | None = None,
                    root: str | None = None) -> dict:
    cfg, root_path = load(params, overrides, root)
    names = [s.name for s in cfg.data.sources]
    train = read_splits_task(layout.prepared(root_path), names, "train")
    val = read_splits_task(layout.prepared(root_path), names, "val")
    global_spec, per_source = tk.plan(cfg, train)
    global_fut = train_tokenizer_task.submit(global_spec)
    own_futs = {name: train_tokenizer_task.submit(spec) for name, spec in per_source.items()}
    return write_tokenizers_task(
        cfg, train, val, global_fut.result(), {n: f.result() for n, f in own_futs.items()},
        layout.tokenizers(root_path), layout.tokenizer_stats(root_path),
    )


def main(argv: list[str] | None = None) -> int:
    args = stage_parser("python -m flows.tokenizers", __doc__).parse_args(argv)
    return run_stage("tokenizers", args, lambda: tokenizers_flow(args.params, args.overrides))


if __name__ == "__main__":
    raise SystemExit(main())
