"""`dept`: the command line over the flows. Thin: parse, validate the config, call a flow.

Bad input ends with one line `dept: error: ...` naming the culprit, and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from flows import _env  # noqa: F401  (defaults before prefect/mlflow are imported)

from dept_core.config import VARIANTS  # noqa: E402

EPILOG = """\
commands:
  run          all of the below for every variant in train.variants (one MLflow parent run)

stages (each also a DVC stage; `dvc repro` runs them in order):
  prepare      read, clean, de-duplicate and split the sources  -> data/prepared/
  tokenizers   SentencePiece: global, per-source, sub-vocabularies -> data/tokenizers/
  train        DEPT rounds for one variant              -> results/pretrain/<variant>/
  evaluate     test splits, continued pre-training, plasticity, downstream
                                                        -> results/evaluate/<variant>/
  compare      the variants side by side                -> results/compare/
  ui           the MLflow UI on 127.0.0.1:5000
  serve        dept_pipeline as a scheduled Prefect deployment (flow.serve)

examples:
  dept prepare
  dept tokenizers --set tokenizers.global_vocab_size=4000
  dept train --variant spec --set train.rounds=4
  dept train --variant spec --backend torchrun --nproc 2
  dept prepare --params configs/smoke.yaml
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", help="parameters file (params.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one parameter, e.g. --set train.rounds=4 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dept", description="DEPT: decoupled-embedding pre-training pipeline.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in [("run", "the whole pipeline: prepare, tokenizers, every variant"),
                       ("prepare", "read, clean and split the data sources"),
                       ("tokenizers", "train the SentencePiece tokenizers")]:
        _common(sub.add_parser(name, help=text, description=text))
    _common(sub.add_parser("compare", help="the variants side by side (table, plots)",
                           description="Summarise results/pretrain/*/metrics.json into "
                                       "results/compare/ and print the table."))
    ui = sub.add_parser("ui", help="open the MLflow UI on 127.0.0.1",
                        description="Serve the project's MLflow store (mlflow.db) on 127.0.0.1.")
    ui.add_argument("--port", type=int, default=5000)
    sv = sub.add_parser("serve", help="serve dept_pipeline as a scheduled Prefect deployment",
                        description="Register dept_pipeline as a Prefect deployment with a "
                                    "cron schedule and run its runs here until stopped "
                                    "(needs PREFECT_API_URL pointing at a running server, "
                                    "e.g. `prefect server start --host 127.0.0.1`).")
    sv.add_argument("--name", default="nightly", help="deployment name (nightly)")
    sv.add_argument("--cron", default="0 2 * * *", help="schedule, UTC (0 2 * * *)")
    _common(sv)
    p = sub.add_parser("train", help="pre-train one variant (resumes if interrupted)",
                       description="Pre-train one variant: glob, trim, spec, spec_opt (DEPT) "
                                   "or std (the centralised baseline).")
    p.add_argument("--variant", required=True, choices=VARIANTS)
    p.add_argument("--backend", choices=("inprocess", "torchrun"),
                   help="= --set train.backend=...: torchrun runs the rounds on ranks "
                        "(torchrun --standalone --nproc_per_node N, Gloo/NCCL)")
    p.add_argument("--nproc", type=int, metavar="N",
                   help="= --set train.nproc_per_node=N (torchrun ranks on this node)")
    _common(p)
    ev = sub.add_parser("evaluate", help="test splits, continued pre-training, plasticity, "
                                         "downstream",
                        description="Evaluate a variant: its exported models on the test "
                                    "splits; continued pre-training with a fresh global "
                                    "embedding; plasticity on the held-out sources; downstream "
                                    "fine-tuning. `--variant random` evaluates the untrained "
                                    "body (the floor).")
    ev.add_argument("--variant", required=True, choices=[*VARIANTS, "random"])
    _common(ev)
    return parser


class _NoTracebackForUserErrors(logging.Filter):
    """Bad input is reported in one line; Prefect's engine would add a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        from dept_core.errors import DeptError

        if record.exc_info and isinstance(record.exc_info[1], DeptError):
            record.exc_info, record.exc_text = None, None
        return True


def _quiet_user_errors() -> None:
    from prefect.logging.configuration import setup_logging

    setup_logging()  # idempotent; the flow run would do it, then without our filter
    for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs"):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(_NoTracebackForUserErrors())


def _run(args: argparse.Namespace) -> object:
    if args.command == "ui":
        return _ui(args.port)
    from flows.common import load

    load(args.params, args.overrides)  # validate before a Prefect server is started
    if args.command in ("run", "train", "serve"):
        from tasks.tracking import check_tracking_uri

        check_tracking_uri(Path.cwd())  # an unreachable MLflow server: fail before any work
    _quiet_user_errors()
    if args.command == "serve":
        from flows.pipeline import serve

        return serve(args.name, args.cron, args.params, args.overrides)
    if args.command == "run":
        from flows.pipeline import dept_pipeline

        dept_pipeline(params=args.params, overrides=args.overrides)
        return _print_comparison()
    if args.command == "compare":
        from flows.compare import compare_flow

        compare_flow(params=args.params, overrides=args.overrides)
        return _print_comparison()
    if args.command == "prepare":
        from flows.prepare import prepare_flow

        return prepare_flow(params=args.params, overrides=args.overrides)
    if args.command == "tokenizers":
        from flows.tokenizers import tokenizers_flow

        return tokenizers_flow(params=args.params, overrides=args.overrides)
    if args.command == "evaluate":
        from flows.evaluate import evaluate_flow

        return evaluate_flow(variant=args.variant, params=args.params,
                             overrides=args.overrides)
    if args.command == "train":
        from flows.pretrain import pretrain_flow

        return pretrain_flow(variant=args.variant, params=args.params,
                             overrides=args.overrides)
    raise AssertionError(args.command)


def _print_comparison() -> None:
    from dept_core.layout import RESULTS

    print((Path.cwd() / RESULTS / "compare" / "summary.md").read_text())
    print("Open the MLflow UI to compare the runs:  dept ui   (or: make ui)  "
          "then browse http://127.0.0.1:5000")


def _ui(port: int) -> None:
    import os
    import subprocess

    from tasks.tracking import redact, tracking_uri

    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    print(f"MLflow UI on http://127.0.0.1:{port}  (store: {redact(tracking_uri(Path.cwd()))})")
    subprocess.run(["mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                    "--backend-store-uri", tracking_uri(Path.cwd())], env=env, check=False)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    for key, flag in (("train.backend", "backend"), ("train.nproc_per_node", "nproc")):
        if getattr(args, flag, None) is not None:  # `dept train` shorthands for --set
            args.overrides.append(f"{key}={getattr(args, flag)}")
    from dept_core.errors import DeptError

    start = time.monotonic()
    try:
        _run(args)
    except DeptError as exc:
        print(f"dept: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("dept: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    print(f"dept {args.command}: done in {time.monotonic() - start:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
