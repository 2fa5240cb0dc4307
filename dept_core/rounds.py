"""DEPT's training rounds (paper Algorithm 1) for GLOB, TRIM, SPEC and SPEC-OPT.

    for round t = 1..T:
        S_t ← sources_per_round sources, sampled without replacement (seeded)
        for k in S_t:  θ_k ← θ; bank_k ← policy.download(k); N_local AdamW steps on D_k
                       Δθ_k = θ_k − θ; policy.upload(k, bank_k)
        θ ← OuterOpt(θ, mean_k Δθ_k); policy.aggregate()
        validate, log, checkpoint

Sources run one after another in this process (the result equals running them in parallel:
each starts from the same θ). `dept_core.distributed` runs the same `run_round` on separate
ranks: each rank trains the sampled sources it holds and an `outer.Exchange` combines the
updates (all_reduce of partial sums) and gathers the round's records.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from dept_core import checkpoint as ck
from dept_core import faults
from dept_core.batches import BatchSampler, derived_seed
from dept_core.comm import CommLedger
from dept_core.config import Config
from dept_core.errors import DeptError
from dept_core.model import (build_model, get_bank, get_body, load_body, lr_at, nbytes, numel,
                             set_bank)
from dept_core.outer import LOCAL, Exchange, OuterOptimizer
from dept_core.sourcedata import SourceData
from dept_core.trainer import (MemorySink, MetricsSink, all_finite, evaluate_windows,
                               local_train, make_optimizer)
from dept_core.variants import POLICIES


class NonFiniteUpdate(DeptError):
    """A source returned NaN/Inf: the round is not applied and the run stops."""


@dataclass
class RunState:
    """Everything a resumed run needs to continue exactly where it stopped."""

    body: dict[str, Tensor]
    policy: object
    outer: OuterOptimizer
    ledger: CommLedger
    round_rng: torch.Generator
    samplers: dict[str, BatchSampler]
    sources: dict[str, int]  # every training source -> its train tokens (config order)
    opt_states: dict[str, dict] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    done: int = 0


@dataclass
class RunResult:
    metrics: dict
    body: dict[str, Tensor]
    banks: dict[str, dict[str, Tensor]]  # per source, as exported
    global_bank: dict[str, Tensor] | None


def _setup(cfg: Config, variant: str, data: dict[str, SourceData], global_vocab: int,
           sources: dict[str, int] | None = None):
    """The working model and the run state for the sources in `data` (this process's share;
    `sources` lists every training source with its train tokens, default: those in `data`)."""
    model = build_model(cfg.model, global_vocab, cfg.seed)
    policy_cls = POLICIES[variant]
    global_bank = None if variant in ("spec", "spec_opt") else get_bank(model)
    ledger = CommLedger()
    policy = policy_cls(cfg.model, global_bank,
                        {k: s.global_ids for k, s in data.items()},
                        {k: s.vocab_size for k, s in data.items()}, cfg.seed, ledger)
    o = cfg.train.outer
    state = RunState(
        body=get_body(model), policy=policy,
        outer=OuterOptimizer(o.optimizer, o.lr, o.momentum), ledger=ledger,
        round_rng=torch.Generator().manual_seed(derived_seed(cfg.seed, "rounds")),
        samplers={k: BatchSampler(s.train, cfg.train.seq_len, cfg.train.batch_size,
                                  derived_seed(cfg.seed, "batches", k))
                  for k, s in data.items()},
        sources=sources or {k: s.train_tokens for k, s in data.items()},
    )
    return model, state


def _save(ckpt_dir: Path, state: RunState, keep: int) -> None:
    tensors = {**ck.pack("body", state.body), **ck.pack("policy", state.policy.state_dict()),
               **ck.pack("outer", state.outer.state_dict()),
               "rng/rounds": state.round_rng.get_state()}
    groups = {}
    for k, sampler in state.samplers.items():
        tensors[f"rng/batches/{k}"] = sampler.state()
    for k, opt in state.opt_states.items():
        flat, groups[k] = ck.optimizer_to_tensors(opt)
        tensors.update(ck.pack(f"opt/{k}", flat))
    meta = {"done": state.done, "history": state.history,
            "ledger": state.ledger.state_dict(), "opt_groups": groups}
    ck.save(ckpt_dir, state.done, tensors, meta, keep)


def _restore(ckpt_dir: Path, state: RunState) -> None:
    found = ck.load_latest(ckpt_dir)
    if found is None:
        return
    _, tensors, meta = found
    state.body = ck.unpack("body", tensors)
    state.policy.load_state_dict(ck.unpack("policy", tensors))
    state.outer.load_state_dict(ck.unpack("outer", tensors))
    state.round_rng.set_state(tensors["rng/rounds"])
    for k, sampler in state.samplers.items():
        sampler.set_state(tensors[f"rng/batches/{k}"])
    state.opt_states = {k: ck.optimizer_from_tensors(ck.unpack(f"opt/{k}", tensors), g)
                        for k, g in meta["opt_groups"].items()}
    state.ledger.load_state_dict(meta["ledger"])
    state.history, state.done = meta["history"], meta["done"]


def sample_sources(names: list[str], k: int, rng: torch.Generator) -> list[str]:
    chosen = torch.randperm(len(names), generator=rng)[:k].sort().values
    return [names[i] for i in chosen.tolist()]


def _train_source(model, state: RunState, cfg: Config, source: str, rnd: int, device):
    """One source's local round: returns (Δbody, new bank, stats)."""
    t = cfg.train
    bank = state.policy.download(rnd, source)
    state.ledger.add(rnd, source, "down", "body", nbytes(state.body))
    load_body(model, state.body)
    set_bank(model, bank)
    opt = make_optimizer(model, t)
    if t.inner_state == "keep" and source in state.opt_states:
        opt.load_state_dict(state.opt_states[source])
    total = t.rounds * t.local_steps
    stats = local_train(
        model, opt, state.samplers[source], t.local_steps, (rnd - 1) * t.local_steps,
        lambda s: lr_at(s, total, t.lr, t.warmup_steps, t.min_lr_ratio), t.grad_clip, device,
    )
    new_body, new_bank = get_body(model), get_bank(model)
    bad = all_finite(new_body) or all_finite(new_bank)
    if bad is not None or not torch.isfinite(torch.tensor(stats.loss)):
        raise NonFiniteUpdate(
            f"round {rnd}: source '{source}' returned a non-finite update "
            f"({bad or 'loss'}); the round was not applied, the last checkpoint is intact "
            f"— lower train.lr or check the source's data"
        )
    delta = {n: new_body[n].cpu() - state.body[n] for n in state.body}
    state.ledger.add(rnd, source, "up", "body", nbytes(delta))
    return delta, {c: v.cpu() for c, v in new_bank.items()}, stats, opt.state_dict()


def evaluate_all(model, state: RunState, data: dict[str, SourceData], device) -> dict:
    out = {}
    load_body(model, state.body)
    for name, src in data.items():
        bank = state.policy.eval_bank(name)
        if bank is None:  # SPEC: a source never sampled has no embeddings yet
            continue
        set_bank(model, bank)
        out[name] = evaluate_windows(model, src.val, src.val_bytes, device)
    return out


def run_round(model, state: RunState, cfg: Config, data: dict[str, SourceData], device,
              group: Exchange = LOCAL) -> dict:
    """One round of Algorithm 1. `data` holds the sources this process trains (all of them
    in-process, a rank's share under torchrun); `group` combines every process's updates.
    Every process samples the same S_t (same seeded generator) and ends with the same θ."""
    rnd, t, start = state.done + 1, cfg.train, time.perf_counter()
    chosen = sample_sources(list(state.sources), t.sources_per_round, state.round_rng)
    mine = [k for k in chosen if k in data]
    deltas, stats, opts = {}, {}, {}
    for k in mine:
        deltas[k], new_bank, stats[k], opts[k] = _train_source(model, state, cfg, k, rnd, device)
        state.policy.upload(rnd, k, new_bank)
        faults.point("source-trained")  # kill -9 tests: mid-round (tests/test_faults.py)
    weights = {k: (state.sources[k] if t.outer.weighting == "tokens" else 1.0)
               for k in chosen}
    means = group.means(state.body, [deltas[k] for k in mine], [weights[k] for k in mine],
                        sum(weights.values()))
    for n, param in state.body.items():
        state.outer.step(f"body/{n}", param, means[n])
    state.policy.aggregate(weights, state.outer, group)
    if t.inner_state == "keep":
        state.opt_states.update(opts)
    shared = group.gather({
        "loss": {k: s.loss for k, s in stats.items()},
        "tokens": sum(s.tokens for s in stats.values()),
        "seconds": sum(s.seconds for s in stats.values()),
        "comm": [r for r in state.ledger.records if r[0] == rnd]})
    _merge_round_ledger(state.ledger, rnd, chosen, [p["comm"] for p in shared])
    losses = {k: v for p in shared for k, v in p["loss"].items()}
    tokens = sum(p["tokens"] for p in shared)
    record = {"round": rnd, "sources": chosen,
              "train_loss": {k: losses[k] for k in chosen},
              "tokens": tokens,
              # processes train side by side: the slowest one's training time
              "tokens_per_s": tokens / max(max(p["seconds"] for p in shared), 1e-9),
              "comm": state.ledger.round_detail(rnd)}
    if rnd % t.eval_every == 0 or rnd == t.rounds:
        val = {k: v for part in group.gather(evaluate_all(model, state, data, device))
               for k, v in part.items()}
        record["val"] = {k: val[k] for k in state.sources if k in val}
    record["seconds"] = time.perf_counter() - start
    return record


def _merge_round_ledger(ledger: CommLedger, rnd: int, chosen: list[str],
                        parts: list[list[tuple]]) -> None:
    """Round `rnd`'s records of every process, in the order one process would have made them
    (source by source, in sampling order); a no-op in-process."""
    by_source: dict[str, list[tuple]] = {}
    for part in parts:
        for rec in part:
            by_source.setdefault(rec[1], []).append(tuple(rec))
    ledger.records = [r for r in ledger.records if r[0] != rnd] + \
        [rec for k in chosen for rec in by_source.get(k, [])]


def flat_metrics(record: dict, cumulative: dict) -> dict[str, float]:
    """One round's record as flat MLflow-style metric names."""
    out = {f"train_loss/{k}": v for k, v in record["train_loss"].items()}
    out["tokens_per_s"] = record["tokens_per_s"]
    out["comm/bytes_down"] = record["comm"]["down"]
    out["comm/bytes_up"] = record["comm"]["up"]
    out["comm/cumulative_bytes"] = cumulative["bytes_down_total"] + cumulative["bytes_up_total"]
    for comp, v in record["comm"]["components"].items():
        out[f"comm/{comp}_bytes"] = v["down"] + v["up"]
    for k, v in record.get("val", {}).items():
        out[f"val_loss/{k}"], out[f"val_bpb/{k}"] = v["loss"], v["bpb"]
    if record.get("val"):
        out["val_bpb_mean"] = sum(v["bpb"] for v in record["val"].values()) / len(record["val"])
    return out
