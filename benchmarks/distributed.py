"""Wall time of the torchrun backend against the in-process backend, 2 sources on 2 ranks.

    python benchmarks/distributed.py [--variant spec] [--rounds 4] [--local-steps 20]
                                     [--size demo] [--repeat 1] [--replicas 2 --strategy fsdp2]

With `--replicas 2` the two ranks are one source group of 2 data-parallel replicas (both
sources on it, each replica 8 of every batch's 16 rows; dept_core.replicas) instead of one
source per rank: the mesh path.

Builds a throw-away project (the embedded en + de sources, prepared and tokenized once), then
runs the same rounds twice, each in a fresh process as a user would:
  inprocess  `train_variant` in one process (torch's default threads: one per core);
  torchrun   `torchrun --standalone --nproc_per_node 2 -m dept_core.distributed`
             (one source per rank, Gloo, OMP_NUM_THREADS=1 per rank: torchrun's default).
Prints wall time (process start to exit, imports included), time inside the rounds (sum of
the rounds' `seconds`) and the ratio torchrun / inprocess for each. Figures go in the README.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

INPROCESS = r"""
import json, sys
from pathlib import Path
from dept_core.config_io import load_config
from dept_core.run import train_variant
root, variant = Path(sys.argv[1]), sys.argv[2]
cfg = load_config(root / "params.yaml")
res, _ = train_variant(cfg, variant, root / "data/prepared", root / "data/tokenizers", None)
(root / "inprocess.json").write_text(json.dumps(res.metrics))
"""


def params(args) -> dict:
    return {
        "seed": 0,
        "data": {"sources": [{"name": n, "kind": "embedded", "preset": "multilingual"}
                             for n in ("en", "de")]},
        "prepare": {"min_doc_chars": 100, "max_bytes_per_source": 300000},
        "tokenizers": {"global_vocab_size": 2000, "per_source_vocab_size": 1000,
                       "sample_bytes_per_source": 150000},
        "model": {"size": args.size, "max_seq_len": 128},
        "train": {"rounds": args.rounds, "local_steps": args.local_steps,
                  "sources_per_round": 2, "batch_size": 16, "seq_len": 128,
                  "warmup_steps": 5, "device": "cpu"},
    }


def mesh_params(raw: dict, args) -> dict:
    """The same run as 1 source group × `args.replicas` replicas."""
    train = {**raw["train"], "backend": "torchrun", "nproc_per_node": 2,
             "replicas_per_source": args.replicas, "replica_strategy": args.strategy}
    return {**raw, "train": train}


def build(root: Path, raw: dict) -> None:
    import yaml

    from common import build_project

    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    build_project(raw, root)


def timed(cmd: list[str], env: dict) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="spec", choices=("glob", "trim", "spec", "spec_opt"))
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--local-steps", type=int, default=20)
    ap.add_argument("--size", default="demo", choices=("tiny", "demo"))
    ap.add_argument("--repeat", type=int, default=1, help="runs of each; the fastest counts")
    ap.add_argument("--replicas", type=int, default=1, choices=(1, 2),
                    help="2: the 2 ranks are one source group of 2 replicas")
    ap.add_argument("--strategy", default="ddp", choices=("ddp", "fsdp2"))
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dept-bench-dist-"))
    build(root, params(args))
    dist_params = "params.yaml"
    if args.replicas > 1:
        import yaml

        dist_params = "params-mesh.yaml"
        (root / dist_params).write_text(yaml.safe_dump(mesh_params(params(args), args)))
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    env.pop("OMP_NUM_THREADS", None)
    runs = {
        "inprocess": [sys.executable, "-c", INPROCESS, str(root), args.variant],
        "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                     "--nproc_per_node", "2", "-m", "dept_core.distributed",
                     "--variant", args.variant, "--params", dist_params, "--root", str(root),
                     "--out", str(root / "torchrun"), "--no-checkpoints", "--no-export"],
    }
    wall: dict[str, list[float]] = {k: [] for k in runs}
    rounds: dict[str, list[float]] = {k: [] for k in runs}
    bpb: dict[str, float] = {}
    for _ in range(args.repeat):  # alternate, so that load on a shared machine hits both
        for name, cmd in runs.items():
            wall[name].append(timed(cmd, env))
            # the rounds' wall times: the in-process metrics (written whole above), or the
            # timings.json the torchrun backend writes beside its metrics.json
            if name == "inprocess":
                metrics = json.loads((root / "inprocess.json").read_text())
                history = metrics["history"]
            else:
                metrics = json.loads((root / "torchrun/metrics.json").read_text())
                history = json.loads((root / "torchrun/timings.json").read_text())["rounds"]
            bpb[name] = metrics["final"]["val_bpb_mean"]
            rounds[name].append(sum(r["seconds"] for r in history))
    w = {k: min(v) for k, v in wall.items()}
    r = {k: min(v) for k, v in rounds.items()}
    layout = ("2 source groups x 1 replica" if args.replicas == 1 else
              f"1 source group x {args.replicas} replicas ({args.strategy})")
    print(f"{args.variant}, model {args.size}, 2 sources, {args.rounds} rounds x "
          f"{args.local_steps} local steps x 16 x 128 tokens, {os.cpu_count()} CPU cores; "
          f"torchrun: {layout}")
    print("| backend | wall s (process) | rounds s | final val bits/byte |")
    print("|---|---|---|---|")
    for k in runs:
        print(f"| {k} | {w[k]:.1f} | {r[k]:.1f} | {bpb[k]:.6f} |")
    print(f"| ratio torchrun / inprocess | {w['torchrun'] / w['inprocess']:.2f} | "
          f"{r['torchrun'] / r['inprocess']:.2f} | |")


if __name__ == "__main__":
    main()
