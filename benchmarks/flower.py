"""Wall time of the Flower backend against the in-process backend, on the smoke config.

    python benchmarks/flower.py [--variant spec] [--repeat 1]

Builds a throw-away project from configs/smoke.yaml (3 sources, tiny model, 2 rounds × 5
local steps), then runs the same rounds each way, alternating when repeated:
  inprocess  `train_variant` in a fresh process (imports included);
  flower     a local deployment (SuperLink + 3 SuperNodes from .venv-flower, started and
             stopped inside the timing) running DEPT's Flower app with `flwr run`.
Prints wall time, the rounds' own time (sum of the rounds' `seconds`), the ratio, whether
both ended with the same weights, and the bytes Flower moved against the ledger's.
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

from common import REPO, build_project, smoke_raw

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from dept_core.config_io import validate  # noqa: E402
from dept_core.federation import LocalDeployment, failure_line  # noqa: E402

INPROCESS = r"""
import json, sys
from pathlib import Path
from dept_core.config_io import load_config
from dept_core.run import train_variant, write_outputs
root, variant = Path(sys.argv[1]), sys.argv[2]
cfg = load_config(root / "params.json")
res, _ = train_variant(cfg, variant, root / "data/prepared", root / "data/tokenizers", None)
write_outputs(cfg, res, root / "data/tokenizers", root / "inprocess" / variant)
"""


def _models(d: Path) -> dict:
    return {p.name: load_file(str(p / "model.safetensors")) for p in sorted(d.iterdir())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="spec", choices=("glob", "trim", "spec", "spec_opt"))
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dept-bench-flower-"))
    cfg = validate(smoke_raw())
    build_project(smoke_raw(), root)
    (root / "params.json").write_text(cfg.model_dump_json())
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    wall: dict[str, list[float]] = {"inprocess": [], "flower": []}
    rounds: dict[str, list[float]] = {"inprocess": [], "flower": []}
    start_s: list[float] = []
    record = {}
    for i in range(args.repeat):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", INPROCESS, str(root), args.variant], env=env,
                       check=True, capture_output=True)
        wall["inprocess"].append(time.perf_counter() - t)
        ref = json.loads((root / "inprocess" / args.variant / "timings.json").read_text())
        rounds["inprocess"].append(sum(r["seconds"] for r in ref["rounds"]))
        work = root / f"flower-{i}"
        t = time.perf_counter()
        with LocalDeployment(cfg.data.train_sources, work / "flwr", work / "logs") as dep:
            start_s.append(time.perf_counter() - t)
            record = dep.run({"params": str(root / "params.json"), "variant": args.variant,
                              "root": str(root), "out": str(work / "out"),
                              "ckpt": str(work / "ckpt"), "state-root": str(work / "sites"),
                              "round-timeout": 600.0})
        wall["flower"].append(time.perf_counter() - t)
        if failure_line(record):
            raise SystemExit(f"flower run failed: {failure_line(record)}")
        fl = json.loads((work / "out" / "timings.json").read_text())
        rounds["flower"].append(sum(r["seconds"] for r in fl["rounds"]))
    a = _models(root / "inprocess" / args.variant / "models")
    b = _models(root / f"flower-{args.repeat - 1}" / "out" / "models")
    worst = max((a[m][k] - b[m][k]).abs().max().item() for m in a for k in a[m])
    metrics = json.loads((root / f"flower-{args.repeat - 1}" / "out" / "metrics.json").read_text())
    fl = metrics["comm"]["flower"]
    w = {k: min(v) for k, v in wall.items()}
    r = {k: min(v) for k, v in rounds.items()}
    t = cfg.train
    print(f"{args.variant}, smoke config: {len(cfg.data.train_sources)} sources, {t.rounds} rounds "
          f"x {t.local_steps} local steps x {t.batch_size} x {t.seq_len} tokens, tiny model, "
          f"{os.cpu_count()} CPU cores; fastest of {args.repeat}")
    print("| backend | wall s | rounds s |")
    print("|---|---|---|")
    print(f"| inprocess | {w['inprocess']:.1f} | {r['inprocess']:.1f} |")
    print(f"| flower (deployment start {min(start_s):.1f} s included) | {w['flower']:.1f} | "
          f"{r['flower']:.1f} |")
    print(f"| ratio flower / inprocess | {w['flower'] / w['inprocess']:.1f} | "
          f"{r['flower'] / r['inprocess']:.1f} |")
    print(f"max |weight difference| {worst:.1e}; train tensors {fl['totals']['train']['down_payload'] + fl['totals']['train']['up_payload']} B "  # noqa: E501
          f"(ledger {metrics['comm']['bytes_down_total'] + metrics['comm']['bytes_up_total']} B), "
          f"all messages {fl['wire_bytes']} B on the wire of which framing {fl['framing_bytes']} B; "
          f"SuperLink counted {record['network-traffic']['total-bytes']} B")


if __name__ == "__main__":
    main()
