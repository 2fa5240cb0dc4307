"""`dept`: the command line over the flows. Thin: parse, validate the config, call a flow.

Bad input ends with one line `dept: error: ...` naming the culprit, and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dept_core.errors import DeptError
from flows.common import (add_backend_args, add_config_args, add_no_wait_arg, add_seed_arg,
                          add_variant_arg,
                          backend_overrides, run_stage)

EPILOG = """\
commands:
  run          all of the below for every variant in train.variants (one MLflow parent run)
  study        a grid of configurations × seeds through the pipeline, reported together

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
  dept train --variant trim --backend torchrun --nproc 2 --replicas 2 --set train.replica_strategy=fsdp2
  dept prepare --params configs/smoke.yaml
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dept", description="DEPT: decoupled-embedding pre-training pipeline.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in [("run", "the whole pipeline: prepare, tokenizers, every variant"),
                       ("prepare", "read, clean and split the data sources"),
                       ("tokenizers", "train the SentencePiece tokenizers")]:
        add_config_args(sub.add_parser(name, help=text, description=text))
    add_config_args(sub.add_parser(
        "compare", help="the variants side by side (table, plots)",
        description="Summarise results/pretrain/*/metrics.json into results/compare/ and "
                    "print the table."))
    sd = sub.add_parser("study", help="a grid of configurations × seeds, reported together",
                        description="Run every cell of a study file (dept_core/study.py) "
                                    "through the pipeline; finished cells are skipped; report "
                                    "in results/study/<name>/.")
    sd.add_argument("--study", required=True, help="study file, e.g. configs/study-cpu.yaml")
    add_no_wait_arg(sd)
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
    add_config_args(sv)
    p = sub.add_parser("train", help="pre-train one variant (resumes if interrupted)",
                       description="Pre-train one variant: a DEPT variant (glob, trim, spec, "
                                   "spec_opt, ...) or a centralised baseline (std).")
    add_variant_arg(p)
    add_seed_arg(p)
    add_backend_args(p)
    add_config_args(p)
    ev = sub.add_parser("evaluate", help="test splits, continued pre-training, plasticity, "
                                         "downstream",
                        description="Evaluate a variant: its exported models on the test "
                                    "splits; continued pre-training with a fresh global "
                                    "embedding; plasticity on the held-out sources; downstream "
                                    "fine-tuning. `--variant random` evaluates the untrained "
                                    "body (the floor).")
    add_variant_arg(ev, reference=True)
    add_seed_arg(ev)
    add_config_args(ev)
    return parser


def _call(args: argparse.Namespace):
    """The flow a command runs (imported only when it runs)."""
    a = args
    if a.command == "serve":
        from flows.pipeline import serve

        return lambda: serve(a.name, a.cron, a.params, a.overrides)
    if a.command == "run":
        from flows.compare import print_comparison
        from flows.pipeline import dept_pipeline

        return lambda: print_comparison(dept_pipeline(params=a.params, overrides=a.overrides))
    if a.command == "compare":
        from flows.compare import compare_flow, print_comparison

        return lambda: print_comparison(compare_flow(params=a.params, overrides=a.overrides))
    if a.command == "prepare":
        from flows.prepare import prepare_flow

        return lambda: prepare_flow(params=a.params, overrides=a.overrides)
    if a.command == "tokenizers":
        from flows.tokenizers import tokenizers_flow

        return lambda: tokenizers_flow(params=a.params, overrides=a.overrides)
    if a.command == "evaluate":
        from flows.evaluate import evaluate_flow

        return lambda: evaluate_flow(variant=a.variant, params=a.params, overrides=a.overrides)
    if a.command == "train":
        from flows.pretrain import pretrain_flow

        return lambda: pretrain_flow(variant=a.variant, params=a.params, overrides=a.overrides)
    raise AssertionError(a.command)


def _temporary_prefect_server(args: argparse.Namespace):
    """Without PREFECT_API_URL, Prefect would start a temporary server at the first flow run
    and wait for it (~10 s, ~6 s of it importing the server in this process). Start the same
    server (uvicorn over Prefect's app, as Prefect starts it: ephemeral mode, no UI, this
    Prefect home; wrapped by flows/prefect_app.py, which also starts a new store as a copy of a
    migrated one) as a subprocess now, while this process imports torch & co. on the other
    core, and point this process at it (before Prefect reads its settings). Only for a valid
    configuration (bad input never starts a server). Returns a function that waits until the
    server answers, or None when nothing was started."""
    import atexit
    import os
    import signal
    import socket
    import subprocess
    import sys

    from dept_core.errors import DeptError
    from flows.common import load
    from flows.prefect_app import ephemeral_server

    if args.command == "serve" or os.environ.get("PREFECT_API_URL") or "prefect" in sys.modules:
        return None
    try:
        if args.command == "study":
            from dept_core.study import expand, load_study

            expand(load_study(Path.cwd() / args.study), Path.cwd())
        else:
            load(args.params, args.overrides)
    except DeptError:
        return None  # run_stage reports it, before any server
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    def die_with_parent() -> None:  # Linux: a kill -9 of this process stops the server too
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass

    cmd, env = ephemeral_server(port)
    # a session of its own: the terminal's Ctrl-C reaches `dept`, which stops its work and
    # then this server (atexit, below), not the server first
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    os.environ["PREFECT_API_URL"] = f"{url}/api"
    print(f"dept: temporary Prefect server on {url}", file=sys.stderr)

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    atexit.register(stop)
    return lambda: _wait_healthy(f"{url}/api/health", proc)


def _wait_healthy(health: str, proc) -> None:
    import os
    import time
    import urllib.request

    from dept_core.errors import DeptError

    end = time.monotonic() + float(os.environ.get(
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120"))
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise DeptError(f"the temporary Prefect server exited with status {proc.returncode}"
                            f" before answering (start one yourself and set PREFECT_API_URL)")
        try:
            urllib.request.urlopen(health, timeout=2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise DeptError(f"the temporary Prefect server did not answer {health} in time")


def _experiment_id() -> str | None:
    """The project's experiment (a new store is created here, under its first-use lock: the
    server we start next would otherwise race a pipeline creating the same tables)."""
    from tasks.tracking import client_and_experiment

    try:
        return client_and_experiment(Path.cwd())[1]
    except Exception:  # an unreachable store: the server says why
        return None


def _ui(port: int) -> None:
    import os
    import subprocess

    from tasks.tracking import redact, tracking_uri

    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    base = f"http://127.0.0.1:{port}/"
    print(f"MLflow UI on {base}  (store: {redact(tracking_uri(Path.cwd()))})", flush=True)
    exp = _experiment_id()
    if exp is not None:  # the runs table in the model-training view (not the GenAI overview)
        print(f"the runs: {base}#/experiments/{exp}/runs?workflowType=machine_learning",
              flush=True)
    subprocess.run(["mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                    "--backend-store-uri", tracking_uri(Path.cwd())], env=env, check=False)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "ui":
        return _ui(args.port)
    if args.command == "study":
        wait_for_server = _temporary_prefect_server(args)
        from flows.study import main as study_main

        if wait_for_server is not None:
            _wait_or_exit(wait_for_server)
        code = study_main(["--study", args.study, *(["--no-wait"] if args.no_wait else [])])
        if code:
            raise SystemExit(code)
        return None
    backend_overrides(args)
    check = None
    if args.command in ("run", "train", "serve", "evaluate", "compare"):
        from tasks.tracking import check_tracking_uri as check
    wait_for_server = _temporary_prefect_server(args)
    call = _call(args)  # torch, transformers, ... import while the Prefect server boots
    if wait_for_server is not None:
        _wait_or_exit(wait_for_server)
    code = run_stage(args.command, args, call, check)
    if argv is None and code == 0 and args.command != "serve":  # a program's end, not a
        _exit_now(0)                                                # caller's; errors as ever
    if code:
        raise SystemExit(code)


def _wait_or_exit(wait_for_server) -> None:
    try:
        wait_for_server()
    except DeptError as exc:
        print(f"dept: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _exit_now(code: int) -> None:
    """End the process as the interpreter would — other threads joined, every atexit handler
    run (Prefect's log and event drains, the temporary server's stop), streams flushed — but
    without tearing down torch, transformers, Prefect and MLflow module by module, which
    takes ~1–1.5 s after a run and saves nothing (measured on the smoke config)."""
    import atexit
    import os
    import threading

    try:
        threading._shutdown()  # what the interpreter does first on exit (private, CPython)
    except AttributeError:
        pass
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
