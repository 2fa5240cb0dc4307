"""Orchestration overhead of the pipeline: Prefect + MLflow + DVC as a share of wall time.

    python benchmarks/orchestration.py [--params configs/smoke.yaml] [--skip-dvc]
                                       [--skip-dept-run] [--skip-per-stage-servers]
                                       [--cold-stages]
                                       [--pairs N [--paired-with dept-run|dvc]]

Runs the same pipeline three ways, side by side, in fresh copies of the project:
  compute  the dept_core functions called directly in one process (no orchestration), with
           the per-round checkpoints the pipeline writes;
  dept run the Prefect pipeline flow in one process (temporary Prefect server, MLflow runs);
  dvc      `dvc repro` (one process per stage), with one shared Prefect server and the warm
           stage runner as `make demo` runs it; with `--cold-stages` also without the warm
           runner (every stage imports the stack itself); and with a temporary server per
           stage (no shared server, no warm runner).
Two overheads per row, both printed:
  vs core     (wall − compute) / wall, compute = the core functions' time only (no imports,
              no interpreter start): everything else counts as orchestration (the strict one);
  vs script   (wall − compute row's wall) / wall: against the same work run as a plain Python
              script, which also starts an interpreter and imports torch and transformers.
With `--pairs N` (N > 1) the compute row and one orchestrated row (`dept run`, or with
`--paired-with dvc` the `dvc repro` row of `make demo`: shared server + warm runner) are run N
times, alternated in ABBA order (compute, orchestrated; orchestrated, compute; ...), so slow
drifts of a shared machine's speed hit both alike; each pair gives its own overheads and the
table reports their median with the lowest and highest pair. Run-to-run noise here (±5-10 %
between rows minutes apart) is larger than a 3 % target: one pair cannot show it.
Prints a table; figures go in the README.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COMPUTE = r"""
import sys, time
from pathlib import Path
from dept_core.config_io import load_config
from benchmarks.common import build_project
from dept_core import layout, report
from dept_core.run import run_key, train_variant, write_outputs
from dept_core.evaluate import run_protocol
import torch
root = Path.cwd(); base = load_config("params.yaml")
t = time.perf_counter()
build_project(base.model_dump(mode="json"), root)
metrics, evals = {}, {}
for seed in base.train.seeds:
    cfg = base.with_train_seed(seed)
    for v in cfg.train.variants:
        prep, tok = root / "data/prepared", root / "data/tokenizers"
        # the per-round checkpoints every pipeline run writes (dept_core's work, not
        # orchestration's: the same files as `dept train` writes)
        ckpt = layout.checkpoint_dir(root, v, run_key(cfg, v, prep, tok))
        res, _ = train_variant(cfg, v, prep, tok, ckpt)
        write_outputs(cfg, res, root / "data/tokenizers", layout.pretrain_dir(root, v, seed))
        metrics.setdefault(v, {})[seed] = res.metrics
        evals.setdefault(v, {})[seed] = run_protocol(cfg, v, root, torch.device("cpu"),
                                                     log=lambda _: None)
    if cfg.evaluate.reference:
        evals.setdefault("random", {})[seed] = run_protocol(cfg, "random", root,
                                                            torch.device("cpu"),
                                                            log=lambda _: None)
summary = report.comparison(metrics, evals, report.settings_of(base), base.evaluate.bootstrap)
report.plot(metrics, root)
report.plot_evaluation(summary, root)
print(f"COMPUTE_SECONDS {time.perf_counter() - t:.3f}")
"""


def fresh_copy(params: Path) -> Path:
    d = Path(tempfile.mkdtemp(prefix="dept-bench-"))
    subprocess.run(["git", "clone", "-q", str(REPO), str(d / "p")], check=True)
    shutil.copy(params, d / "p" / "params.yaml")
    return d / "p"


def timed(cmd: list[str], cwd: Path, env: dict) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    print(f"{' '.join(Path(c).name for c in cmd)}: {wall:.1f} s", file=sys.stderr, flush=True)
    return wall


def compute_row(params: Path, env: dict) -> tuple[float, float]:
    """(wall time of the plain script, the core functions' own time), in a fresh copy."""
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", COMPUTE], cwd=fresh_copy(params), env=env,
                         check=True, capture_output=True, text=True).stdout
    wall = time.perf_counter() - t
    compute = float(out.split("COMPUTE_SECONDS")[1])
    print(f"compute: {wall:.1f} s (core functions {compute:.1f} s)", file=sys.stderr, flush=True)
    return wall, compute


def dept_run_row(params: Path, env: dict) -> float:
    return timed([sys.executable, "-m", "flows.cli", "run"], fresh_copy(params), env)


def dvc_row(params: Path, env: dict) -> float:
    """`dvc repro` as `make demo` runs it: one shared Prefect server and (unless `env` sets
    DEPT_NO_WARM) the warm stage runner."""
    return timed([str(REPO / "scripts/with_prefect_server.sh"), "dvc", "repro"],
                 fresh_copy(params), env)


ORCHESTRATED = {"dept-run": ("dept run", dept_run_row), "dvc": ("dvc repro", dvc_row)}


def paired(params: Path, env: dict, pairs: int, against: str) -> None:
    """`pairs` alternated (ABBA) pairs of the compute row and the orchestrated row `against`
    (a key of ORCHESTRATED): the median of the pairs' overheads with the lowest and the
    highest."""
    name, row = ORCHESTRATED[against]
    rows = []
    for i in range(pairs):
        if i % 2 == 0:
            (wall_compute, compute), wall = compute_row(params, env), row(params, env)
        else:
            wall = row(params, env)
            wall_compute, compute = compute_row(params, env)
        rows.append((compute, wall_compute, wall))
        print(f"pair {i + 1}: compute {compute:.1f} s, script {wall_compute:.1f} s, {name} "
              f"{wall:.1f} s: {100 * (wall - compute) / wall:.1f} % vs core, "
              f"{100 * (wall - wall_compute) / wall:.1f} % vs script", flush=True)
    core = sorted(100 * (w - c) / w for c, _, w in rows)
    script = sorted(100 * (w - s) / w for _, s, w in rows)
    print(f"params: {params}   {pairs} pairs, ABBA order")
    print(f"{name} overhead vs core:   median {statistics.median(core):.1f} % "
          f"(pairs: {', '.join(f'{x:.1f}' for x in core)})")
    print(f"{name} overhead vs script: median {statistics.median(script):.1f} % "
          f"(pairs: {', '.join(f'{x:.1f}' for x in script)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(REPO / "configs/smoke.yaml"))
    ap.add_argument("--skip-dvc", action="store_true")
    ap.add_argument("--skip-dept-run", action="store_true",
                    help="the compute row and the `dvc repro` rows only")
    ap.add_argument("--skip-per-stage-servers", action="store_true",
                    help="skip `dvc repro` with a temporary Prefect server per stage")
    ap.add_argument("--cold-stages", action="store_true",
                    help="also `dvc repro` with the shared server but no warm stage runner")
    ap.add_argument("--pairs", type=int, default=1,
                    help="N > 1: only the compute row and one orchestrated row "
                         "(--paired-with), N alternated pairs")
    ap.add_argument("--paired-with", choices=sorted(ORCHESTRATED), default="dept-run",
                    help="with --pairs: `dept run` (default) or `dvc repro` as make demo runs it")
    args = ap.parse_args()
    if args.pairs < 1:
        ap.error(f"--pairs: {args.pairs} (at least 1)")
    row_flags = [f for f, on in (("--skip-dvc", args.skip_dvc),
                                 ("--skip-dept-run", args.skip_dept_run),
                                 ("--skip-per-stage-servers", args.skip_per_stage_servers),
                                 ("--cold-stages", args.cold_stages)) if on]
    if args.pairs > 1 and row_flags:
        ap.error(f"--pairs pairs the compute row with one row chosen by --paired-with: it "
                 f"cannot be combined with {', '.join(row_flags)}")
    if args.pairs == 1 and args.paired_with != "dept-run":
        ap.error("--paired-with needs --pairs N (N > 1)")
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"],
           "HF_HUB_OFFLINE": "1"}
    # Every `dept run` / `dvc repro` row makes a new Prefect store in its fresh copy: it starts
    # from the cached migrated store (flows/prefect_app.py), as every new project does after
    # the machine's first server of this Prefect version; made here if there is none yet.
    template = subprocess.run([sys.executable, "-m", "flows.prefect_app"], cwd=REPO, env=env,
                              check=True, capture_output=True, text=True).stdout.strip()
    print(f"Prefect store template: {template}", file=sys.stderr, flush=True)
    if args.pairs > 1:
        return paired(Path(args.params), env, args.pairs, args.paired_with)
    rows = []
    wall_compute, compute = compute_row(Path(args.params), env)
    rows.append(("compute only (one process, incl. imports)", wall_compute))
    if not args.skip_dept_run:
        rows.append(("dept run (Prefect flow + MLflow)", dept_run_row(Path(args.params), env)))
    if not args.skip_dvc:
        rows.append(("dvc repro, shared server + warm runner (= make demo)",
                     dvc_row(Path(args.params), env)))
    if not args.skip_dvc and args.cold_stages:
        rows.append(("dvc repro, shared server, no warm runner",
                     dvc_row(Path(args.params), {**env, "DEPT_NO_WARM": "1"})))
    if not args.skip_dvc and not args.skip_per_stage_servers:
        rows.append(("dvc repro, a temporary server per stage",
                     timed(["dvc", "repro"], fresh_copy(Path(args.params)),
                           {k: v for k, v in env.items() if k != "DEPT_WARM_SOCKET"})))
    print(f"params: {args.params}   compute (core functions only): {compute:.1f} s")
    print(f"{'how':55s} {'wall s':>8s} {'vs core':>9s} {'vs script':>10s}")
    for name, wall in rows:
        print(f"{name:55s} {wall:8.1f} {100 * (wall - compute) / wall:7.1f} % "
              f"{100 * (wall - wall_compute) / wall:8.1f} %", flush=True)


if __name__ == "__main__":
    main()
