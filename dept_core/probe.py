"""Frozen-body probes: what a body holds when only a fresh embedding may learn.

Why (paper §4-5 compare *bodies*): the paper's CPT trains the whole model with a fresh
global embedding, so at a small budget it mostly measures how fast that embedding is
learned — every body, the untrained one included, ends near the same loss. Freezing the body
removes that: the body's weights are fixed, only a fresh tied global embedding trains (the
same initialisation, batches and steps for every body), so a lower loss can only come from
what the body computes. This goes beyond the paper (which has no probe); it is the standard
linear-probing tool applied to the embedding layer, the only part DEPT decouples.

The learning rate is chosen per body on the validation split from `evaluate.probe.lrs` (the
same grid for every body: the study's equal-budget rule); only the chosen model is scored on
the test splits. The report flags a choice at the edge of the grid (the optimum may lie
outside it).
"""

from __future__ import annotations

import torch

from dept_core import continued as cp
from dept_core.batches import EvalSet, MixtureSampler
from dept_core.config import Config
from dept_core.metrics import mean
from dept_core.model import bank_param_ids
from dept_core.sourcedata import SourceData

Body = dict[str, torch.Tensor]


def freeze_body(model: torch.nn.Module) -> None:
    """Only the bank (token embeddings, tied output, positions) keeps requires_grad."""
    bank = bank_param_ids(model)
    for p in model.parameters():
        p.requires_grad_(id(p) in bank)


def probe_sampler(cfg: Config, data: dict[str, SourceData]) -> MixtureSampler:
    """The probe's batches: `evaluate.probe.batch_size` sequences from the mixture (p_k ∝
    n_k^τ), generators of their own — the same batches for every body and every rate."""
    t = cfg.train
    return MixtureSampler({k: s.train for k, s in data.items()}, t.seq_len,
                          cfg.evaluate.probe.batch_size, t.std_temperature, t.seed,
                          "probe-batches", "probe-mixture")


def val_score(model, val: dict[str, EvalSet], device) -> tuple[float, dict[str, float]]:
    """Mean validation bits/byte over the sources (what a choice is made on)."""
    per = {k: r["bpb"] for k, r in cp.evaluate_sets(model, val, device).items()}
    return mean(list(per.values())), per


def choose(scores: dict[float, float]) -> float:
    """The grid point with the lowest validation score (ties: the smaller rate). Takes only
    validation numbers: nothing measured on test can move a choice."""
    return min(scores, key=lambda lr: (scores[lr], lr))


def lm_probe(cfg: Config, body: Body, vocab: int, data: dict[str, SourceData],
             device) -> tuple[torch.nn.Module, dict]:
    """Train a fresh global embedding on the frozen `body`, once per rate of the grid; return
    the model chosen on validation and what was tried."""
    pc = cfg.evaluate.probe
    val = {k: s.val for k, s in data.items()}
    models, scores, per_source = {}, {}, {}
    for lr in pc.lrs:
        model = cp.model_from(cfg, body, cp.fresh_bank(cfg, vocab), device)
        freeze_body(model)
        cp.train_steps(model, cfg, probe_sampler(cfg, data), pc.steps, lr, device)
        scores[lr], per_source[lr] = val_score(model, val, device)
        models[lr] = model
    lr = choose(scores)
    lrs = sorted(pc.lrs)
    info = {"lr": lr, "steps": pc.steps, "batch_size": pc.batch_size,
            "val_bpb": {str(k): v for k, v in scores.items()},
            "val_bpb_per_source": {str(k): v for k, v in per_source.items()},
            "at_grid_edge": len(lrs) > 1 and lr in (lrs[0], lrs[-1])}
    return models[lr], info
