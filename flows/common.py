"""What every flow and its command line share: the project root and configuration, the stage
arguments, and how a stage ends (bad input: one line `dept: error: ...`, exit status 2).

Each `python -m flows.<stage>` parses its own arguments with these helpers (no detour
through the `dept` CLI); `flows/cli.py` builds `dept <command>` from the same pieces.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

from dept_core.config import Config
from dept_core.config_io import load_config


def load(params: str | Path = "params.yaml", overrides: list[str] | None = None,
         root: str | Path | None = None) -> tuple[Config, Path]:
    root = Path(root) if root is not None else Path.cwd()
    params = Path(params)
    if not params.is_absolute():
        params = root / params
    return load_config(params, overrides), root


# ------------------------------------------------------------------------ stage arguments ----
def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", help="parameters file (params.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one parameter, e.g. --set train.rounds=4 (repeatable)")
    add_no_wait_arg(p)


def add_no_wait_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-wait", action="store_true",
                   help="when another command is writing this project, stop at once instead "
                        "of waiting for it (= DEPT_NO_WAIT=1)")


def add_variant_arg(p: argparse.ArgumentParser, reference: bool = False) -> None:
    """--variant: a registered variant (`dept_core.variants`); with `reference`, also the
    untrained body."""
    from dept_core import variants

    choices = [*variants.names(), *([variants.REFERENCE] if reference else [])]
    p.add_argument("--variant", required=True, choices=choices)


def add_seed_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, metavar="S",
                   help="= --set train.seed=S: the training seed of this run (train.seeds "
                        "lists the ones the pipeline runs)")


def add_backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("inprocess", "torchrun", "flower"),
                   help="= --set train.backend=...: torchrun runs the rounds on ranks "
                        "(torchrun --standalone --nproc_per_node N, Gloo/NCCL); flower on a "
                        "local Flower SuperLink with one SuperNode per source")
    p.add_argument("--nproc", type=int, metavar="N",
                   help="= --set train.nproc_per_node=N (torchrun ranks on this node)")
    p.add_argument("--replicas", type=int, metavar="R",
                   help="= --set train.replicas_per_source=R (torchrun: data-parallel ranks "
                        "per source group; the ranks are source groups × R)")


def backend_overrides(args: argparse.Namespace) -> None:
    """`--backend` / `--nproc` / `--replicas` / `--seed` are shorthands for `--set train.backend=...` etc."""
    for key, flag in (("train.backend", "backend"), ("train.nproc_per_node", "nproc"),
                      ("train.replicas_per_source", "replicas"), ("train.seed", "seed")):
        if getattr(args, flag, None) is not None:
            args.overrides.append(f"{key}={getattr(args, flag)}")


def stage_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=(doc or "").strip().splitlines()[0])
    add_config_args(p)
    return p


# ---------------------------------------------------------------------- how a stage ends ----
class _NoTracebackForUserErrors(logging.Filter):
    """Bad input is reported in one line; Prefect's engine would add a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        from dept_core import interrupt
        from dept_core.errors import DeptError

        if record.exc_info and (isinstance(record.exc_info[1], DeptError)
                                or interrupt.is_interrupt(record.exc_info[1])):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_user_errors() -> None:
    from prefect.logging.configuration import setup_logging

    setup_logging()  # idempotent; the flow run would do it, then without our filter
    for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs"):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(_NoTracebackForUserErrors())


def _no_heartbeats():
    """Prefect's flow-run heartbeats off for a run started from a terminal or a DVC stage.

    A heartbeat lets a Prefect automation mark a flow run whose process vanished (killed,
    out of memory) as crashed; this project defines no such automation, and a run started
    here reports its own end. Each flow run's heartbeat thread costs up to 1 s when the run
    ends (Prefect joins it between 1 s sleeps): ~14 s of a `dvc repro` of 14 stages,
    measured with cProfile. Runs of a deployment (`dept serve`) keep them, and so does a
    user who configured a frequency (environment or Prefect profile)."""
    from prefect.settings import (PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings,
                                  temporary_settings)
    from prefect.settings.models.flows import FlowsSettings

    default = FlowsSettings.model_fields["heartbeat_frequency"].default
    if (get_current_settings().flows.heartbeat_frequency != default
            or any(k in os.environ for k in ("PREFECT_FLOWS_HEARTBEAT_FREQUENCY",
                                             "PREFECT_RUNNER_HEARTBEAT_FREQUENCY"))):
        return nullcontext()
    return temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})


def run_stage(name: str, args: argparse.Namespace, call: Callable[[], object],
              check: Callable[[Path], None] | None = None) -> int:
    """Validate the config (before a Prefect server is started), run `check(root)` (a stage
    that logs to MLflow passes `tasks.tracking.check_tracking_uri`: an unreachable server
    fails before any work), run `call`; bad input ends with one error line and status 2."""
    from dept_core import diskspace, interrupt
    from dept_core.errors import DeptError

    start = time.monotonic()
    if getattr(args, "no_wait", False):
        os.environ["DEPT_NO_WAIT"] = "1"  # flows/lock.py: refuse a project in use
    if name != "serve":  # (a deployment server stops on Ctrl-C as Prefect's runner does)
        interrupt.install()  # Ctrl-C / SIGTERM stop at the next step (dept_core/interrupt.py)
    interrupt.where(name)
    try:
        load(args.params, args.overrides)
        if check is not None:
            check(Path.cwd())
        quiet_user_errors()
        with _no_heartbeats() if name != "serve" else nullcontext():
            call()
    except DeptError as exc:
        _settle_prefect_events()
        if isinstance(exc, diskspace.DiskFull):
            print(f"dept: error: {exc}; {_save_traceback(name, exc)}", file=sys.stderr)
            return 1
        print(f"dept: error: {exc}", file=sys.stderr)
        return 2
    except BaseException as exc:
        if interrupt.is_interrupt(exc):  # Ctrl-C, SIGTERM (Prefect's TerminationSignal too)
            _settle_prefect_events(timeout=2.0)
            print(interrupt.message(), file=sys.stderr)
            return interrupt.exit_code(exc)
        if not diskspace.is_full(exc):  # a full disk that surfaced outside our writers
            raise
        _settle_prefect_events()
        full = diskspace.DiskFull(getattr(exc, "filename", None) or Path.cwd())
        print(f"dept: error: {full}; {_save_traceback(name, exc)}", file=sys.stderr)
        return 1
    _settle_prefect_events()
    print(f"dept {name}: done in {time.monotonic() - start:.1f} s", file=sys.stderr)
    return 0


def _save_traceback(stage: str, exc: BaseException) -> str:
    """The full traceback in a log file outside the project (whose disk is full); the
    phrase that names it."""
    import tempfile
    import traceback

    path = Path(tempfile.gettempdir()) / f"dept-{stage}-{os.getpid()}.log"
    try:
        path.write_text("".join(traceback.format_exception(exc)), encoding="utf-8")
        return f"traceback in {path}"
    except OSError:
        return "the traceback could not be saved either"


def _settle_prefect_events(timeout: float = 5.0) -> None:
    """Wait (at most `timeout`) until Prefect has sent the run events it still queues, so the
    stage's last line stays its last: a flow that has just failed leaves ~10 state events,
    and Prefect's drain at exit would warn about them after it ("Still processing items").
    (The flow-run heartbeat thread's join used to give it that time; see _no_heartbeats.)
    Reads Prefect's private queue; does nothing if that ever changes. Only the events
    workers' queues: the registry of instances is shared by all of Prefect's queue services,
    and the API log worker takes its items in batches without ever marking them done (waiting
    on it cost every stage the whole timeout)."""
    if "prefect.events.worker" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker

    end = time.monotonic() + timeout
    try:
        queues = [inst._queue for inst in list(EventsWorker._instances.values())
                  if isinstance(inst, EventsWorker)]
    except AttributeError:
        return
    for queue in queues:
        while getattr(queue, "unfinished_tasks", 0) and time.monotonic() < end:
            time.sleep(0.02)
