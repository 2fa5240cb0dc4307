"""The server side of a round: averaging source updates and the outer optimiser step.

Small pure functions on tensors (tested with hand-built values in tests/test_outer.py).
A source's update is Δ_k = θ_k − θ (the paper's Algorithm 1 works with these differences).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def normalised(weights: Sequence[float]) -> list[float]:
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("weights must sum to a positive number")
    return [float(w) / total for w in weights]


def weighted_mean(deltas: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """Σ_k w_k Δ_k / Σ_k w_k — FedAvg's aggregate (uniform weights: the paper's choice)."""
    out = torch.zeros_like(deltas[0])
    for delta, w in zip(deltas, normalised(weights)):
        out.add_(delta, alpha=w)
    return out


def masked_row_mean(
    deltas: Sequence[Tensor], rows: Sequence[Tensor], weights: Sequence[float], n_rows: int
) -> tuple[Tensor, Tensor]:
    """TRIM's aggregate of embedding rows (paper §3, TRIM).

    Source k returns `deltas[k]` (|V_k| × d) for global rows `rows[k]`. Each global row is
    averaged over the sources that hold it only — a source that does not hold a row does not
    pull it towards zero — and rows held by no sampled source get no update.
    Returns (mean Δ of shape n_rows × d, boolean mask of rows held by at least one source).
    """
    like = torch.empty(n_rows, deltas[0].shape[1], dtype=deltas[0].dtype)
    return finish_row_mean(*masked_row_sums(deltas, rows, weights, like))


def weighted_sum(deltas: Sequence[Tensor], weights: Sequence[float], total: float,
                 like: Tensor) -> Tensor:
    """Σ_k (w_k / total) Δ_k over *some* of a round's sources (zeros when there are none).

    With `total` = the weight of every sampled source, the sum of these partial sums over
    processes is `weighted_mean` over all sources, computed with the same arithmetic.
    """
    out = torch.zeros_like(like)
    for delta, w in zip(deltas, weights):
        out.add_(delta, alpha=float(w) / float(total))
    return out


def masked_row_sums(deltas: Sequence[Tensor], rows: Sequence[Tensor],
                    weights: Sequence[float], like: Tensor) -> tuple[Tensor, Tensor]:
    """TRIM's numerators and denominators: Σ_k w_k Δ_k per global row, Σ_k w_k per row."""
    acc = torch.zeros(like.shape, dtype=like.dtype)
    wsum = torch.zeros(like.shape[0], dtype=like.dtype)
    for delta, ids, w in zip(deltas, rows, weights):
        acc.index_add_(0, ids, delta * float(w))
        wsum.index_add_(0, ids, torch.full((len(ids),), float(w), dtype=wsum.dtype))
    return acc, wsum


def finish_row_mean(acc: Tensor, wsum: Tensor) -> tuple[Tensor, Tensor]:
    held = wsum > 0
    acc[held] /= wsum[held].unsqueeze(1)
    return acc, held


class Exchange:
    """How a round's source updates meet (the server side of Algorithm 1's aggregation).

    In-process (this class) every sampled source's update is in this process, so a mean is
    a plain weighted mean. `dept_core.distributed.CollectiveExchange` computes the same means
    when each process holds only its own sources' updates: partial sums + all_reduce.
    `total` is the summed weight of every source sampled this round.
    """

    rank, world_size = 0, 1

    def mean(self, like: Tensor, deltas: Sequence[Tensor], weights: Sequence[float],
             total: float) -> Tensor:
        return weighted_mean(deltas, weights)

    def means(self, params: dict[str, Tensor], deltas: Sequence[dict[str, Tensor]],
              weights: Sequence[float], total: float) -> dict[str, Tensor]:
        return {n: self.mean(p, [d[n] for d in deltas], weights, total)
                for n, p in params.items()}

    def row_mean(self, like: Tensor, deltas: Sequence[Tensor], rows: Sequence[Tensor],
                 weights: Sequence[float]) -> tuple[Tensor, Tensor]:
        return masked_row_mean(deltas, rows, weights, like.shape[0])

    def gather(self, obj: object) -> list:
        """`obj` of every process, in rank order."""
        return [obj]

    def gather_to_root(self, obj: object) -> list | None:
        """`obj` of every process on rank 0 (None on the others)."""
        return [obj]

    def stats(self) -> dict:
        """What this process's exchange moved (nothing in-process)."""
        return {}


LOCAL = Exchange()


class OuterOptimizer:
    """θ ← OuterOpt(θ, mean Δ).

    * "avg": θ ← θ + η·mean Δ (outer SGD; η = 1 is FedAvg, the paper's choice; η ≠ 1 is a
      server learning rate, beyond the paper);
    * "nesterov": DiLoCo's outer step on the pseudo-gradient g = −mean Δ:
      m ← μ m + g;  θ ← θ − η (g + μ m). Beyond the paper; offered as an option.
    With `rows` (TRIM), only the rows held this round are stepped and their momentum updated.
    """

    def __init__(self, kind: str, lr: float = 1.0, momentum: float = 0.0):
        self.kind, self.lr, self.momentum = kind, lr, momentum
        self.buffers: dict[str, Tensor] = {}

    @torch.no_grad()
    def step(self, key: str, param: Tensor, mean_delta: Tensor, rows: Tensor | None = None) -> None:
        if rows is None:
            rows = torch.ones(param.shape[0], dtype=torch.bool)
        if self.kind == "avg":
            param[rows] += self.lr * mean_delta[rows].to(param.dtype)  # lr 1: exactly FedAvg
            return
        g = -mean_delta[rows].to(param.dtype)
        buf = self.buffers.setdefault(key, torch.zeros_like(param))
        buf[rows] = self.momentum * buf[rows] + g
        param[rows] -= self.lr * (g + self.momentum * buf[rows])

    def state_dict(self) -> dict[str, Tensor]:
        return {k: v.clone() for k, v in self.buffers.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.buffers = {k: v.clone() for k, v in state.items()}
