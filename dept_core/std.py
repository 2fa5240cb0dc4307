"""The STD baseline: centralised training on the mixture (paper §4 baseline).

One model over the global vocabulary; every step draws `sources_per_round × batch_size`
sequences whose sources are sampled with temperature τ (p_k ∝ n_k^τ: τ=0 uniform, τ=1
proportional to train tokens). `rounds × local_steps` steps: the same total tokens as the DEPT
runs it is compared with. Communication is that of data-parallel training over
`sources_per_round` workers with gradients all-reduced every step: each worker sends and
receives every parameter once per step (Table 1: O(M) per step).
"""

from __future__ import annotations

import time

import torch

from dept_core import checkpoint as ck
from dept_core.batches import BatchSampler, derived_seed
from dept_core.comm import CommLedger
from dept_core.config import Config
from dept_core.model import build_model, get_bank, lm_loss, lr_at, nbytes
from dept_core.sourcedata import SourceData
from dept_core.trainer import autocast_for, evaluate_windows, make_optimizer


def source_probs(tokens: list[int], tau: float) -> torch.Tensor:
    w = torch.tensor(tokens, dtype=torch.float64) ** tau
    return w / w.sum()


def mixture_batch(probs: torch.Tensor, samplers: dict[str, BatchSampler], n: int,
                  rng: torch.Generator) -> torch.Tensor:
    """`n` sequences whose sources are drawn with probabilities `probs` (in sampler order)."""
    picks = torch.multinomial(probs, n, replacement=True, generator=rng)
    counts = torch.bincount(picks, minlength=len(samplers)).tolist()
    return torch.cat([s.next(c) for s, c in zip(samplers.values(), counts) if c])


class StdRun:
    def __init__(self, cfg: Config, data: dict[str, SourceData], global_vocab: int, device):
        self.cfg, self.data, self.device = cfg, data, device
        self.model = build_model(cfg.model, global_vocab, cfg.seed).to(device)
        self.opt = make_optimizer(self.model, cfg.train)
        self.rng = torch.Generator().manual_seed(derived_seed(cfg.seed, "std-mixture"))
        self.samplers = {k: BatchSampler(s.train, cfg.train.seq_len, cfg.train.batch_size,
                                         derived_seed(cfg.seed, "batches", k))
                         for k, s in data.items()}
        self.probs = source_probs([s.train_tokens for s in data.values()],
                                  cfg.train.std_temperature)
        self.ledger, self.history, self.done = CommLedger(), [], 0

    def batch(self) -> torch.Tensor:
        t = self.cfg.train
        return mixture_batch(self.probs, self.samplers, t.sources_per_round * t.batch_size,
                             self.rng)

    def run_round(self) -> dict:
        t, rnd, start = self.cfg.train, self.done + 1, time.perf_counter()
        total, loss_sum, tok_sum = t.rounds * t.local_steps, 0.0, 0
        for i in range(t.local_steps):
            lr = lr_at((rnd - 1) * t.local_steps + i, total, t.lr, t.warmup_steps,
                       t.min_lr_ratio)
            for group in self.opt.param_groups:
                group["lr"] = lr
            with autocast_for(self.device):
                loss, n = lm_loss(self.model, self.batch().to(self.device))
            (loss / n).backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            loss_sum, tok_sum = loss_sum + float(loss.detach()), tok_sum + n
        seconds = time.perf_counter() - start
        self._account(rnd)
        record = {"round": rnd, "sources": list(self.data),
                  "train_loss": {"mixture": loss_sum / tok_sum}, "tokens": tok_sum,
                  "tokens_per_s": tok_sum / max(seconds, 1e-9),
                  "comm": self.ledger.round_detail(rnd)}
        if rnd % t.eval_every == 0 or rnd == t.rounds:
            record["val"] = {k: evaluate_windows(self.model, s.val, s.val_bytes, self.device)
                             for k, s in self.data.items()}
        record["seconds"] = time.perf_counter() - start
        return record

    def _account(self, rnd: int) -> None:
        """Data-parallel all-reduce: each worker sends and receives all of M every step."""
        bank = get_bank(self.model)
        body_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters()) \
            - nbytes(bank)
        parts = {"body": body_bytes, **{c: nbytes({c: v}) for c, v in bank.items()}}
        for w in range(self.cfg.train.sources_per_round):
            for comp, n in parts.items():
                for direction in ("down", "up"):
                    self.ledger.add(rnd, f"worker{w}", direction, comp,
                                    n * self.cfg.train.local_steps)

    # --- checkpointing ----------------------------------------------------------------------
    def save(self, ckpt_dir, keep: int) -> None:
        flat, groups = ck.optimizer_to_tensors(self.opt.state_dict())
        tensors = {**ck.pack("model", self.model.state_dict()), **ck.pack("opt", flat),
                   "rng/mixture": self.rng.get_state(),
                   **{f"rng/batches/{k}": s.state() for k, s in self.samplers.items()}}
        tensors.pop("model/lm_head.weight", None) if self.cfg.model.tie_embeddings else None
        meta = {"done": self.done, "history": self.history, "opt_groups": groups,
                "ledger": self.ledger.state_dict()}
        ck.save(ckpt_dir, self.done, tensors, meta, keep)

    def restore(self, ckpt_dir) -> None:
        found = ck.load_latest(ckpt_dir)
        if found is None:
            return
        _, tensors, meta = found
        self.model.load_state_dict(ck.unpack("model", tensors), strict=False)
        self.opt.load_state_dict(ck.optimizer_from_tensors(ck.unpack("opt", tensors),
                                                           meta["opt_groups"]))
        self.rng.set_state(tensors["rng/mixture"])
        for k, s in self.samplers.items():
            s.set_state(tensors[f"rng/batches/{k}"])
        self.ledger.load_state_dict(meta["ledger"])
        self.history, self.done = meta["history"], meta["done"]
