"""The paper's fair-comparison protocol and plasticity, for any pre-trained body.

**Continued pre-training (CPT)** — paper §4: DEPT variants end with embeddings that differ in
vocabulary (TRIM, SPEC) or do not exist globally (SPEC, SPEC-OPT), so the paper compares the
*bodies*: each body gets a freshly initialised global embedding and is trained further on the
mixture for 15-19 % of the pre-training steps; then perplexity is measured with the global
tokenizer. We apply it to every variant, STD included, with the same fresh embedding, the same
batches and the same schedule, so the only difference between variants is the body. GLOB,
TRIM and STD are also continued from their pre-trained global embeddings (the paper reports
both for the variants that have them).

Interpretation (the paper gives no CPT schedule): "pre-training steps" is the number of
optimiser steps a source path takes, `train.rounds × train.local_steps` (STD takes the same);
CPT batches are STD's (`sources_per_round × batch_size` sequences from the mixture, p_k ∝
n_k^τ); the rate warms up over 10 % of the CPT steps and decays by cosine to
`train.min_lr_ratio`.

**Plasticity** — paper §5: how quickly a body adapts to a source it never saw. The body gets
a fresh embedding and trains `evaluate.plasticity_steps` steps on the unseen source alone;
validation bits/byte is recorded against steps. Interpretation: the unseen source is read with
the global tokenizer (no new tokenizer is trained for it), so the comparison again differs
only in the body.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from dept_core.batches import BatchSampler, EvalSet, MixtureSampler, derived_seed
from dept_core.config import Config
from dept_core.metrics import mean
from dept_core.model import build_model, init_bank, load_body, lr_at, set_bank
from dept_core.sourcedata import SourceData, load_sources, split_eval_set
from dept_core.trainer import evaluate_set, local_train, make_optimizer

Body = dict[str, Tensor]
Bank = dict[str, Tensor]


def cpt_steps(cfg: Config) -> int:
    """`cpt_fraction` of the pre-training steps, at least `cpt_min_steps` (0: no CPT)."""
    ev = cfg.evaluate
    if ev.cpt_fraction == 0:
        return 0
    return max(round(ev.cpt_fraction * cfg.train.rounds * cfg.train.local_steps),
               ev.cpt_min_steps)


def fresh_bank(cfg: Config, vocab_size: int) -> Bank:
    """The same fresh embedding for every variant (seeded by the training seed only)."""
    gen = torch.Generator().manual_seed(derived_seed(cfg.train.seed, "fresh-embedding"))
    return init_bank(cfg.model, vocab_size, gen)


def model_from(cfg: Config, body: Body, bank: Bank, device) -> torch.nn.Module:
    model = build_model(cfg.model, bank["tok"].shape[0], cfg.train.seed)
    load_body(model, body)
    set_bank(model, bank)
    return model.to(device)


def mixture(cfg: Config, data: dict[str, SourceData], tag: str) -> MixtureSampler:
    """STD's batches (`sources_per_round × batch_size` sequences, p_k ∝ n_k^τ), drawn from
    generators of their own (`tag`), so CPT does not replay pre-training's batches."""
    t = cfg.train
    return MixtureSampler({k: s.train for k, s in data.items()}, t.seq_len,
                          t.sources_per_round * t.batch_size, t.std_temperature, t.seed,
                          f"{tag}-batches", f"{tag}-mixture")


def train_steps(model, cfg: Config, sampler, steps: int, lr: float, device,
                every: int | None = None, on_chunk: Callable[[int], None] | None = None
                ) -> float:
    """`steps` AdamW steps of the shared inner loop (`trainer.local_train`), warm-up over
    10 % then cosine decay; `on_chunk(step)` after every `every` steps. Mean train loss."""
    t = cfg.train
    opt = make_optimizer(model, t)
    warmup = max(1, steps // 10)
    done, loss_sum, tok_sum = 0, 0.0, 0
    while done < steps:
        n = min(every or steps, steps - done)
        stats = local_train(model, opt, sampler, n, done,
                            lambda s: lr_at(s, steps, lr, warmup, t.min_lr_ratio),
                            t.grad_clip, device, micro_batch=t.micro_batch_size)
        done += n
        loss_sum, tok_sum = loss_sum + stats.loss * stats.tokens, tok_sum + stats.tokens
        if on_chunk:
            on_chunk(done)
    return loss_sum / max(tok_sum, 1)


def cpt_checkpoints(steps: int, points: int) -> list[int]:
    """`points` evenly spaced step counts ending at `steps` (none when `points` is 0)."""
    return sorted({max(1, round(steps * k / points)) for k in range(1, points + 1)}) \
        if points and steps else []


def continued_pretraining(cfg: Config, body: Body, bank: Bank, data: dict[str, SourceData],
                          device, curve: bool = False) -> tuple[torch.nn.Module, dict]:
    """CPT of `body` + `bank` on the mixture of `data` (global tokenizer); returns the model.
    With `curve`, validation bits/byte (and per-document losses) of every source in `data`
    at `evaluate.cpt_eval_points` checkpoints: how the gap between bodies moves with the
    length of the CPT (the paper fixes one length; beyond it)."""
    steps = cpt_steps(cfg)
    model = model_from(cfg, body, bank, device)
    marks = cpt_checkpoints(steps, cfg.evaluate.cpt_eval_points) if curve else []
    points: list[dict] = []

    def on_chunk(step: int) -> None:
        if step in marks:
            points.append({"step": step, "val": evaluate_sets(
                model, {k: s.val for k, s in data.items()}, device)})

    loss = train_steps(model, cfg, mixture(cfg, data, "cpt"), steps,
                       cfg.evaluate.cpt_lr or cfg.train.lr, device,
                       _gcd_every(marks, steps) if marks else None, on_chunk if marks else None)
    info = {"steps": steps, "train_loss": loss}
    if marks:
        info["curve"] = points
    return model, info


def _gcd_every(marks: list[int], steps: int) -> int:
    """The largest chunk that lands on every checkpoint (train_steps calls back per chunk)."""
    import math

    return math.gcd(*marks, steps)


def test_sets(cfg: Config, prepared: Path, tok_dir: Path, sources: list[str]
              ) -> dict[str, EvalSet]:
    """Each source's whole test split, read with the tokenizer in `tok_dir`."""
    return {name: split_eval_set(tok_dir, prepared, name, "test", cfg.train.seq_len)
            for name in sources}


def evaluate_sets(model, sets: dict[str, EvalSet], device) -> dict[str, dict]:
    """Per source: bits/byte etc. and the per-document losses (paired intervals)."""
    return {k: evaluate_set(model, ev, device, per_doc=True) for k, ev in sets.items()}


def with_means(in_dist: dict[str, dict], out_dist: dict[str, dict]) -> dict:
    return {"in_distribution": in_dist, "out_of_distribution": out_dist,
            "in_distribution_bpb_mean": mean([v["bpb"] for v in in_dist.values()]),
            "out_of_distribution_bpb_mean": mean([v["bpb"] for v in out_dist.values()]),
            "in_distribution_ppl_mean": mean([v["ppl"] for v in in_dist.values()]),
            "out_of_distribution_ppl_mean": mean([v["ppl"] for v in out_dist.values()])}


def plasticity(cfg: Config, body: Body, vocab_size: int, source: SourceData, device
               ) -> list[dict]:
    """Bits/byte on `source`'s validation split after 0, E, 2E, ... K adaptation steps."""
    ev = cfg.evaluate
    model = model_from(cfg, body, fresh_bank(cfg, vocab_size), device)
    sampler = BatchSampler(source.train, cfg.train.seq_len, cfg.train.batch_size,
                           derived_seed(cfg.train.seed, "plasticity-batches", source.name))
    curve = [{"step": 0, **evaluate_set(model, source.val, device, per_doc=True)}]

    def on_chunk(step: int) -> None:
        curve.append({"step": step, **evaluate_set(model, source.val, device, per_doc=True)})

    train_steps(model, cfg, sampler, ev.plasticity_steps, cfg.train.lr, device,
                ev.plasticity_eval_every, on_chunk)
    return curve


def global_data(cfg: Config, prepared: Path, tok_root: Path, sources: list[str]
                ) -> dict[str, SourceData]:
    """Sources as the global tokenizer reads them (what CPT and plasticity train on)."""
    return load_sources("global", sources, prepared, tok_root, cfg.train.seq_len)
