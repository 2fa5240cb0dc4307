"""DEPT's training rounds (paper Algorithm 1) for every variant with an embedding policy.

    for round t = 1..T:
        S_t ← the round's sources (train.schedule: balanced or random, seeded)
        for k in S_t:  θ_k ← θ; bank_k ← policy.download(k); N_local AdamW steps on D_k
                       Δθ_k = θ_k − θ; policy.upload(k, bank_k)
        θ ← OuterOpt(θ, mean_k Δθ_k); policy.aggregate()
        validate, log, checkpoint

`DeptRun` is one such run behind the run protocol of `dept_core.run` (`run_round`, `save`,
`restore`, `result`). Sources run one after another in this process (the result equals
running them in parallel: each starts from the same θ). Under torchrun
(`dept_core.distributed`) the same class runs on every rank with a `CollectiveExchange`: each
rank trains the sampled sources it holds and the exchange combines the updates (all_reduce
of partial sums) and gathers the round's records.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from dept_core import accel
from dept_core import checkpoint as ck
from dept_core import faults
from dept_core.batches import BatchSampler, derived_seed
from dept_core.comm import CommLedger
from dept_core.config import Config
from dept_core.errors import DeptError
from dept_core.model import build_model, get_bank, get_body, load_body, lr_at, nbytes, set_bank
from dept_core.outer import LOCAL, Exchange, OuterOptimizer
from dept_core.policies import POLICIES
from dept_core.sourcedata import SourceData, SourceInfo
from dept_core.trainer import evaluate_set, first_nonfinite, local_train, make_optimizer
from dept_core.variants import Variant


class NonFiniteUpdate(DeptError):
    """A source returned NaN/Inf: the round is not applied and the run stops."""


@dataclass
class RunOutcome:
    """What a finished run hands to `dept_core.run` (metrics, exports)."""

    body: dict[str, Tensor]
    banks: dict[str, dict[str, Tensor]]  # per source, as exported (config order)
    global_bank: dict[str, Tensor] | None
    sources: dict[str, SourceInfo]       # every training source (config order)
    history: list[dict]
    ledger: CommLedger
    exchange_stats: list[dict] = field(default_factory=list)  # per process (torchrun)


def sample_sources(names: list[str], k: int, rng: torch.Generator) -> list[str]:
    chosen = torch.randperm(len(names), generator=rng)[:k].sort().values
    return [names[i] for i in chosen.tolist()]


def source_schedule(names: list[str], rounds: int, k: int, kind: str, seed: int
                    ) -> list[list[str]]:
    """S_1 .. S_T, each in config order.

    * `random`: k sources drawn uniformly without replacement every round (the paper's
      federated sampling); a source's participation count is binomial.
    * `balanced` (beyond the paper): every source takes part in exactly T·k/n rounds (needs
      n | T·k; the config checks it). Each round takes the k sources with the most rounds still
      owed, ties broken by a seeded random order: with every quota ≤ the rounds left, this
      always completes, and with k = n every source trains every round.
    """
    rng = torch.Generator().manual_seed(derived_seed(seed, "rounds"))
    if kind == "random":
        return [sample_sources(names, k, rng) for _ in range(rounds)]
    owed = {name: rounds * k // len(names) for name in names}
    out = []
    for _ in range(rounds):
        tiebreak = torch.randperm(len(names), generator=rng).tolist()
        order = sorted(range(len(names)), key=lambda i: (-owed[names[i]], tiebreak.index(i)))
        chosen = sorted(order[:k])
        for i in chosen:
            owed[names[i]] -= 1
        out.append([names[i] for i in chosen])
    return out


def inner_schedule(t, first: int):
    """The inner learning rate of a round starting at global step `first`: warm-up then
    cosine over the run's steps (`lr_at`); with a reset inner state and round_warmup_steps W,
    each round's first W steps also ramp linearly from lr/W (our addition: a fresh AdamW at the
    peak rate makes the first round-2 steps worse even for sources trained in that round)."""
    total, ramp = t.rounds * t.local_steps, t.round_warmup_steps
    if t.inner_state != "reset" or ramp == 0:
        return lambda s: lr_at(s, total, t.lr, t.warmup_steps, t.min_lr_ratio)
    return lambda s: lr_at(s, total, t.lr, t.warmup_steps, t.min_lr_ratio) * \
        min(1.0, (s - first + 1) / ramp)


def participation(schedule: list[list[str]], names: list[str]) -> dict[str, int]:
    """Rounds each source trained in."""
    return {name: sum(name in s for s in schedule) for name in names}


class DeptRun:
    """One DEPT variant's rounds over the sources in `data` (this process's share; `sources`
    describes every training source, default: those in `data`)."""

    def __init__(self, cfg: Config, variant: Variant, data: dict[str, SourceData],
                 global_vocab: int, device: torch.device, exchange: Exchange = LOCAL,
                 sources: dict[str, SourceInfo] | None = None, replicas=None,
                 rows: dict[str, Tensor | None] | None = None):
        policy_cls = POLICIES[variant.policy]
        if policy_cls.server_bank == variant.local_banks_only:
            raise ValueError(f"variant '{variant.name}': local_banks_only="
                             f"{variant.local_banks_only} contradicts policy '{variant.policy}'")
        if policy_cls.needs_subvocab and variant.tokenizer != "subvocab":
            raise ValueError(f"variant '{variant.name}': policy '{variant.policy}' needs the "
                             f"subvocab tokenizer layout, not '{variant.tokenizer}'")
        self.cfg, self.data, self.device, self.exchange = cfg, data, device, exchange
        self.replicas = replicas  # dept_core.replicas.Replicas: this source group's ranks
        seed = cfg.train.seed
        self.model = build_model(cfg.model, global_vocab, seed)
        self.ledger = CommLedger()
        # rows (TRIM's V_k as global ids) and vocabulary sizes of the sources the policy
        # serves: this process's, or (a cross-silo server, dept_core.silo) every source's
        infos = sources or {k: s.info() for k, s in data.items()}
        self.policy = policy_cls(
            cfg.model, get_bank(self.model) if policy_cls.server_bank else None,
            rows if rows is not None else {k: s.global_ids for k, s in data.items()},
            {k: infos[k].vocab_size for k in (data if rows is None else rows)}, seed,
            self.ledger)
        t, o = cfg.train, cfg.train.outer
        self.body = get_body(self.model)
        self.outer = OuterOptimizer(o.optimizer, o.server_lr, o.momentum)
        self.samplers = {k: BatchSampler(s.train, t.seq_len, t.batch_size,
                                         derived_seed(seed, "batches", k))
                         for k, s in data.items()}
        self.sources = sources or {k: s.info() for k, s in data.items()}
        self.source_names = list(self.sources)
        self.schedule = source_schedule(list(self.sources), t.rounds, t.sources_per_round,
                                        t.schedule, seed)
        self.opt_states: dict[str, dict] = {}
        self.history: list[dict] = []
        self.done = 0
        # device placement, optional per-block compile, pinned batches on CUDA
        self.samplers = accel.prepare(self.model, self.samplers, cfg, device)

    # --- the run protocol -------------------------------------------------------------------
    def run_round(self) -> dict:
        """One round of Algorithm 1. Every process samples the same S_t (same seeded
        generator) and ends with the same θ; the round's record is appended to `history`."""
        rnd, t, start = self.done + 1, self.cfg.train, time.perf_counter()
        chosen = self.schedule[rnd - 1]
        mine = [k for k in chosen if self._holds(k)]
        deltas, stats, opts = {}, {}, {}
        for k, (delta, stat, opt) in self._train_sources(rnd, mine).items():
            deltas[k], stats[k], opts[k] = delta, stat, opt
        weights = {k: (self.sources[k].train_tokens if t.outer.weighting == "tokens" else 1.0)
                   for k in chosen}
        means = self.exchange.means(self.body, [deltas[k] for k in mine],
                                    [weights[k] for k in mine], sum(weights.values()))
        for n, param in self.body.items():
            self.outer.step(f"body/{n}", param, means[n])
        self.policy.aggregate(weights, self.outer, self.exchange)
        if t.inner_state == "keep":
            self.opt_states.update({k: o for k, o in opts.items() if o})  # (remote: none)
        record = self._record(rnd, chosen, stats)
        if rnd % t.eval_every == 0 or rnd == t.rounds:
            val = {k: v for part in self.exchange.gather(self._validate())
                   for k, v in part.items()}
            record["val"] = {k: val[k] for k in self.sources if k in val}
        record["seconds"] = time.perf_counter() - start
        self.history.append(record)
        self.done = rnd
        return record

    def save(self, ckpt_dir: Path, keep: int) -> None:
        tensors = {**ck.pack("body", self.body), **ck.pack("policy", self.policy.state_dict()),
                   **ck.pack("outer", self.outer.state_dict())}
        groups = {}
        for k, sampler in self.samplers.items():
            tensors[f"rng/batches/{k}"] = sampler.state()
        for k, opt in self.opt_states.items():
            flat, groups[k] = ck.optimizer_to_tensors(opt)
            tensors.update(ck.pack(f"opt/{k}", flat))
        meta = {"done": self.done, "history": self.history,
                "ledger": self.ledger.state_dict(), "opt_groups": groups}
        ck.save(ckpt_dir, self.done, tensors, meta, keep)

    def restore(self, ckpt_dir: Path) -> bool:
        found = ck.load_latest(ckpt_dir)
        if found is None:
            return False
        _, tensors, meta = found
        self.body = ck.unpack("body", tensors)
        self.policy.load_state_dict(ck.unpack("policy", tensors))
        self.outer.load_state_dict(ck.unpack("outer", tensors))
        for k, sampler in self.samplers.items():
            sampler.set_state(tensors[f"rng/batches/{k}"])
        self.opt_states = {k: ck.optimizer_from_tensors(ck.unpack(f"opt/{k}", tensors), g)
                           for k, g in meta["opt_groups"].items()}
        self.ledger.load_state_dict(meta["ledger"])
        self.history, self.done = meta["history"], meta["done"]
        return True

    def result(self) -> RunOutcome | None:
        """The final body and banks; under torchrun the banks are gathered on rank 0 once
        (other ranks get None)."""
        local = {k: b for k in self.data if (b := self.policy.eval_bank(k)) is not None}
        parts = self.exchange.gather_to_root({"banks": local, "stats": self.exchange.stats()})
        if parts is None:
            return None
        banks = {k: v for p in parts for k, v in p["banks"].items()}
        return RunOutcome(self.body, {k: banks[k] for k in self.sources if k in banks},
                          self.policy.bank, self.sources, self.history, self.ledger,
                          [p["stats"] for p in parts])

    # --- one source, one round ----------------------------------------------------------------
    def _holds(self, source: str) -> bool:
        """Whether this process trains `source` (its data is here)."""
        return source in self.data

    def _train_sources(self, rnd: int, mine: list[str]) -> dict:
        """Train this process's sampled sources, one after another, each handing its bank
        to the policy: {source: (Δbody, stats, inner optimiser state)}, in sampling order."""
        out = {}
        for k in mine:
            delta, new_bank, stat, opt = self._train_source(k, rnd)
            self.policy.upload(rnd, k, new_bank)
            faults.point("source-trained")  # kill -9 tests: mid-round (tests/test_faults.py)
            out[k] = (delta, stat, opt)
        return out

    def _train_source(self, source: str, rnd: int):
        """One source's local round: (Δbody, new bank, stats, inner optimiser state)."""
        bank = self.policy.download(rnd, source)
        self.ledger.add(rnd, source, "down", "body", nbytes(self.body))
        delta, new_bank, stats, opt_state = local_round(
            self.cfg, self.model, self.body, bank, self.samplers[source],
            self.opt_states.get(source), source, rnd, self.device, self.replicas)
        self.ledger.add(rnd, source, "up", "body", nbytes(delta))
        return delta, new_bank, stats, opt_state

    def _validate(self) -> dict:
        """Validation of this process's sources that have embeddings (a SPEC source never
        sampled has none yet)."""
        out = {}
        load_body(self.model, self.body)
        for name, src in self.data.items():
            bank = self.policy.eval_bank(name)
            if bank is None:
                continue
            set_bank(self.model, bank)
            out[name] = evaluate_set(self.model, src.val, self.device)
        return out

    def _record(self, rnd: int, chosen: list[str], stats: dict) -> dict:
        shared = self.exchange.gather({
            "loss": {k: s.loss for k, s in stats.items()},
            "tokens": sum(s.tokens for s in stats.values()),
            "seconds": sum(s.seconds for s in stats.values()),
            "comm": [r for r in self.ledger.records if r[0] == rnd]})
        _merge_round_ledger(self.ledger, rnd, chosen, [p["comm"] for p in shared])
        losses = {k: v for p in shared for k, v in p["loss"].items()}
        tokens = sum(p["tokens"] for p in shared)
        return {"round": rnd, "sources": chosen,
                "train_loss": {k: losses[k] for k in chosen},
                "tokens": tokens,
                # processes train side by side: the slowest one's training time
                "tokens_per_s": tokens / max(max(p["seconds"] for p in shared), 1e-9),
                "comm": self.ledger.round_detail(rnd)}


def local_round(cfg: Config, model, body: dict[str, Tensor], bank: dict[str, Tensor],
                sampler, opt_state: dict | None, source: str, rnd: int,
                device: torch.device, replicas=None):
    """One source's local round from the server's θ and the bank it starts from:
    (Δbody, new bank, stats, inner optimiser state). Shared by the in-process and torchrun
    rounds (`DeptRun`) and a cross-silo client (`dept_core.silo`), so all run the same steps."""
    t = cfg.train
    load_body(model, body)
    set_bank(model, bank)
    first, rep = (rnd - 1) * t.local_steps, replicas
    keep = t.inner_state == "keep" and opt_state is not None
    if rep is None:
        opt = make_optimizer(model, t)
        if keep:
            opt.load_state_dict(opt_state)
        stats = local_train(model, opt, sampler, t.local_steps, first,
                            inner_schedule(t, first), t.grad_clip, device,
                            micro_batch=t.micro_batch_size)
        new_opt_state = opt.state_dict()
    else:  # this source's replicas: DDP / FSDP2 over the replica group
        work = rep.wrap(model)
        opt = make_optimizer(work, t)
        if keep:
            rep.load_optimizer_state(work, opt, opt_state)
        stats = local_train(work, opt, rep.slice(sampler), t.local_steps,
                            first, inner_schedule(t, first), t.grad_clip, device,
                            micro_batch=t.micro_batch_size, replicas=rep)
        rep.write_back(model, work)
        new_opt_state = rep.optimizer_state(work, opt) if t.inner_state == "keep" else {}
        del work, opt
    new_body, new_bank = get_body(model), get_bank(model)
    bad = first_nonfinite(new_body) or first_nonfinite(new_bank)
    if bad is not None or not torch.isfinite(torch.tensor(stats.loss)):
        raise NonFiniteUpdate(
            f"round {rnd}: source '{source}' returned a non-finite update "
            f"({bad or 'loss'}); the round was not applied, the last checkpoint is intact "
            f"— lower train.lr or check the source's data"
        )
    delta = {n: new_body[n].cpu() - body[n] for n in body}
    return delta, {c: v.cpu() for c, v in new_bank.items()}, stats, new_opt_state


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
