"""Scaling with the number of sources: time and peak memory per round, embedding memory per
source, for N = 2, 4, 8, 16 sources (every source sampled every round: |S_t| = N).

    python benchmarks/scaling.py [--sizes 2 4 8 16] [--variants glob spec]

Sources: the 8 embedded multilingual languages, each split into two disjoint halves of its
documents (16 real-text sources: `kind: files` JSON lines). Each N runs in a fresh process
(prepare + tokenizers + 2 rounds of each variant) so that its peak RSS is its own. Expected
(paper §3): GLOB keeps one |V|×d matrix however many sources; SPEC adds one |V_k|×d matrix per
source; the round time grows with |S_t| since sources run one after another in one process.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO

LANGS = ["en", "de", "fr", "ru", "ja", "zh", "es", "it"]
RUNNER = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[3])
from benchmarks.common import build_project
from dept_core.layout import PREPARED, TOKENIZERS
from dept_core.run import train_variant
raw, variants = json.loads(sys.argv[1]), sys.argv[2].split(",")
cfg, root = build_project(raw)
out = {}
for v in variants:
    t = time.perf_counter()
    res, data = train_variant(cfg, v, root / PREPARED, root / TOKENIZERS, None)
    m = res.metrics
    rounds = [h["seconds"] for h in m["history"]]
    emb = m["memory"]["embedding_bytes"]
    out[v] = {"s_per_round": rounds[-1],  # round 1 also pays first-call warm-up
              "emb_mb_per_source": sum(emb.values()) / len(emb) / 1e6,
              "emb_mb_total": (sum(emb.values()) if v == "spec" else
                               m["memory"]["global_embedding_bytes"]) / 1e6,
              "body_mb": m["memory"]["body_bytes"] / 1e6}
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("RESULT " + json.dumps(out))
"""


def split_sources(tmp: Path, docs_per_half: int = 60) -> list[dict]:
    out = []
    for half in ("a", "b"):
        for lang in LANGS:
            with gzip.open(REPO / "corpus" / "multilingual" / f"{lang}.jsonl.gz", "rt") as fh:
                docs = [json.loads(line) for _, line in zip(range(2 * docs_per_half), fh)]
            part = docs[:docs_per_half] if half == "a" else docs[docs_per_half:]
            path = tmp / f"{lang}-{half}.jsonl"
            path.write_text("".join(json.dumps({"text": d["text"]}) + "\n" for d in part))
            out.append({"name": f"{lang}-{half}", "kind": "files", "paths": [str(path)],
                        "format": "jsonl"})
    return out


def params(sources: list[dict]) -> dict:
    n = len(sources)
    return {"seed": 0, "data": {"sources": sources},
            "prepare": {"min_doc_chars": 100, "val_bytes": 4000, "test_bytes": 4000},
            "tokenizers": {"global_vocab_size": 2000, "per_source_vocab_size": 1500,
                           "sample_bytes_per_source": 60000, "character_coverage": 0.98},
            "model": {"size": "tiny", "max_seq_len": 64},
            "train": {"rounds": 2, "sources_per_round": n, "local_steps": 3, "batch_size": 8,
                      "seq_len": 64, "warmup_steps": 1, "eval_every": 100}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2, 4, 8, 16])
    ap.add_argument("--variants", nargs="+", default=["glob", "spec"])
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="dept-scaling-"))
    # interleave languages and halves: N=2 is two languages, N=16 every half of every one
    pool = split_sources(tmp)
    print(f"{'N':>3s} {'variant':7s} {'s/round':>8s} {'s/round/source':>15s} "
          f"{'emb MB/source':>14s} {'emb MB total':>13s} {'body MB':>8s} {'peak RSS MB':>12s}")
    for n in a.sizes:
        proc = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(params(pool[:n])),
                               ",".join(a.variants), str(REPO)], capture_output=True,
                              text=True, cwd=REPO)
        if proc.returncode:
            sys.exit(f"N={n}: {proc.stderr.strip().splitlines()[-1]}")
        res = json.loads(proc.stdout.split("RESULT ")[1])
        for v in a.variants:
            r = res[v]
            print(f"{n:3d} {v:7s} {r['s_per_round']:8.2f} {r['s_per_round'] / n:15.3f} "
                  f"{r['emb_mb_per_source']:14.3f} {r['emb_mb_total']:13.3f} "
                  f"{r['body_mb']:8.3f} {res['peak_rss_mb']:12.0f}")


if __name__ == "__main__":
    main()
