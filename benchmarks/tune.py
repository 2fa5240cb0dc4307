"""Choose settings on the VALIDATION split: pre-train variants under a grid of overrides and
print each one's mean validation bits/byte (never test data), its ratio to the unigram
yardstick on the same split, and its wall time.

    python benchmarks/tune.py [--params params.yaml] [--variants glob spec std]
                              [--grid '[["train.inner_state=keep"], ["train.lr=0.006"]]']
                              [--project DIR]

The project (prepare + tokenizers) is built once for `--params` (or reused from --project);
every grid point trains each variant from scratch, in this process, with the core functions
(no orchestration). The defaults in params.yaml were chosen with this script; the commands and
figures are in the README ("How the defaults were chosen").
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import build_project  # noqa: F401  (sets sys.path)

from dept_core.config_io import load_config  # noqa: E402
from dept_core.layout import PREPARED, TOKENIZERS  # noqa: E402
from dept_core.run import train_variant  # noqa: E402


def unigram_val_bpb(root: Path, sources: list[str]) -> float:
    stats = json.loads((root / TOKENIZERS / "stats.json").read_text())["global"]["sources"]
    return sum(stats[s]["unigram_bits_per_byte"] for s in sources) / len(sources)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--variants", nargs="+", default=["glob", "spec", "std"])
    ap.add_argument("--grid", default="[[]]", help="JSON list of override lists")
    ap.add_argument("--project", help="a built project to reuse (prepare + tokenizers)")
    ap.add_argument("--out", help="append one JSON line per run to this file")
    a = ap.parse_args()
    base = load_config(a.params)
    if a.project and (Path(a.project) / TOKENIZERS / "stats.json").is_file():
        root = Path(a.project)
    else:
        _, root = build_project(base.model_dump(mode="json"), Path(a.project) if a.project
                                else None)
    print(f"project {root}")
    uni = unigram_val_bpb(root, base.data.train_sources)
    print(f"unigram yardstick (validation, mean over sources): {uni:.4f} bits/byte")
    print(f"{'overrides':60s} {'variant':9s} {'val bpb':>8s} {'× unigram':>9s} {'s':>6s}")
    for overrides in json.loads(a.grid):
        cfg = load_config(a.params, overrides)
        for v in a.variants:
            t = time.perf_counter()
            res, _ = train_variant(cfg, v, root / PREPARED, root / TOKENIZERS, None)
            secs = time.perf_counter() - t
            bpb = res.metrics["final"]["val_bpb_mean"]
            name = " ".join(overrides) or "(params as given)"
            print(f"{name:60s} {v:9s} {bpb:8.4f} {bpb / uni:9.3f} {secs:6.0f}", flush=True)
            if a.out:
                with open(a.out, "a") as fh:
                    fh.write(json.dumps({"overrides": overrides, "variant": v, "val_bpb": bpb,
                                         "ratio": bpb / uni, "seconds": secs}) + "\n")


if __name__ == "__main__":
    main()
