"""Model FLOP utilisation of a DEPT local round against this machine's fp32 matmul throughput.

    python benchmarks/mfu.py [--sizes demo] [--steps 10] [--reps 3]

Peak: the best of several fp32 `torch.mm` of 1024² and 2048² matrices (2·n³ FLOPs each), with
torch's default threads. Model FLOPs per trained token (PaLM appendix B convention, causal
attention not halved): 6·N + 12·n_layers·d·T, N = parameters doing matmuls (the body plus the
tied output projection |V|·d; the input lookup does none), T = sequence length. Achieved =
FLOPs/token × tokens/s of `rounds.run_round` (benchmarks/throughput.py's DEPT side).
"""

from __future__ import annotations

import argparse
import time

import common  # noqa: F401  (sets sys.path)
from throughput import measure

import torch

import paper_scale  # noqa: E402  (benchmarks/paper_scale.py: the FLOPs formula)

from dept_core.config import ModelConfig


def matmul_flops(reps: int = 5) -> tuple[float, dict[int, float]]:
    per_n = {}
    for n in (1024, 2048):
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)
        best = 0.0
        for _ in range(reps):
            t = time.perf_counter()
            torch.mm(a, b)
            best = max(best, 2 * n ** 3 / (time.perf_counter() - t))
        per_n[n] = best
    return max(per_n.values()), per_n


def model_flops_per_token(size: str, vocab: int, seq: int) -> float:
    """paper_scale.flops_per_token of the model throughput.py measures (the default
    family, Llama: its body counted on the meta device, SwiGLU MLP included)."""
    mcfg = ModelConfig(size=size, max_seq_len=max(seq, 64))
    return paper_scale.flops_per_token(mcfg, seq, *paper_scale.shapes(mcfg, vocab))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["demo"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=6000)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    peak_before, per_n = matmul_flops()
    rows = []
    for size in a.sizes:
        r = measure(size, a.steps, a.batch, a.seq, a.vocab, a.reps, "glob", log=lambda _: None)
        rows.append((size, r))
    peak = max(peak_before, matmul_flops()[0])  # before and after: the best the box gave
    print(f"fp32 matmul peak ({torch.get_num_threads()} threads): {peak / 1e9:.1f} GFLOP/s "
          f"(1024²: {per_n[1024] / 1e9:.1f}, 2048²: {per_n[2048] / 1e9:.1f})")
    print(f"{'size':6s} {'MFLOP/token':>12s} {'tokens/s':>9s} {'GFLOP/s':>8s} {'MFU':>6s} "
          f"{'bare tokens/s':>14s} {'bare MFU':>9s}")
    for size, r in rows:
        f = model_flops_per_token(size, a.vocab, a.seq)
        print(f"{size:6s} {f / 1e6:12.2f} {r['dept']:9.0f} {f * r['dept'] / 1e9:8.2f} "
              f"{100 * f * r['dept'] / peak:5.1f}% {r['bare']:14.0f} "
              f"{100 * f * r['bare'] / peak:8.1f}%")


if __name__ == "__main__":
    main()
