"""The STD baseline: centralised training on the mixture (paper §4 baseline).

One model over the global vocabulary; every step draws `sources_per_round × batch_size`
sequences whose sources are sampled with temperature τ (p_k ∝ n_k^τ: τ=0 uniform, τ=1
proportional to train tokens). `rounds × local_steps` steps: the same total tokens as the DEPT
runs it is compared with. Communication is that of data-parallel training over
`sources_per_round` workers with gradients all-reduced every step: each worker sends and
receives every parameter once per step (Table 1: O(M) per step).

`StdRun` implements the run protocol of `dept_core.run`; a "round" is `local_steps` steps,
so its curves line up with the DEPT runs' rounds.

**ACT** (active forgetting; Chen et al., "Improving Language Plasticity via Pretraining with
Active Forgetting", NeurIPS 2023 — the baseline DEPT's §5 compares plasticity against) is the
same run with `forget_every=K`: after every K-th optimiser step (K, 2K, ...) the token
embeddings are re-initialised. Interpretations (beyond what the DEPT paper specifies): the
fresh rows are drawn like every fresh embedding here (N(0, 0.02), seeded by the training seed
and the step, so a resumed run re-draws exactly the same rows); their AdamW moments are reset
with them; with tied embeddings the output projection is the same matrix and is reset too, an
untied head is reset alike, learned positions (GPT-2) are kept; no reset happens at the very
last step, so the exported model is never a just-forgotten one.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from dept_core import checkpoint as ck
from dept_core.batches import MixtureSampler
from dept_core.comm import CommLedger
from dept_core.config import Config
from dept_core.batches import derived_seed
from dept_core.model import build_model, get_bank, get_body, init_bank, lr_at, nbytes
from dept_core.rounds import RunOutcome
from dept_core.sourcedata import SourceData
from dept_core.trainer import LocalStats, evaluate_set, local_train, make_optimizer


class StdRun:
    def __init__(self, cfg: Config, data: dict[str, SourceData], global_vocab: int,
                 device: torch.device, forget_every: int | None = None):
        t = cfg.train
        self.cfg, self.data, self.device = cfg, data, device
        self.forget_every = forget_every
        self.model = build_model(cfg.model, global_vocab, t.seed).to(device)
        self.opt = make_optimizer(self.model, t)
        self.batches = MixtureSampler({k: s.train for k, s in data.items()}, t.seq_len,
                                      t.sources_per_round * t.batch_size, t.std_temperature,
                                      t.seed, "batches", "std-mixture")
        self.ledger, self.history, self.done = CommLedger(), [], 0
        self.source_names = list(data)

    # --- the run protocol -------------------------------------------------------------------
    def run_round(self) -> dict:
        t, rnd, start = self.cfg.train, self.done + 1, time.perf_counter()
        total = t.rounds * t.local_steps
        first, chunks = (rnd - 1) * t.local_steps, []
        for a, b in self._chunks(first, first + t.local_steps, total):
            chunks.append(local_train(
                self.model, self.opt, self.batches, b - a, a,
                lambda s: lr_at(s, total, t.lr, t.warmup_steps, t.min_lr_ratio), t.grad_clip,
                self.device, micro_batch=t.micro_batch_size))
            if self.forget_every and b % self.forget_every == 0 and b < total:
                forget_embeddings(self.model, self.opt, self.cfg, b)
        stats = LocalStats(
            sum(c.loss * c.tokens for c in chunks) / max(sum(c.tokens for c in chunks), 1),
            sum(c.tokens for c in chunks), sum(c.seconds for c in chunks),
            [x for c in chunks for x in c.step_losses])
        self._account(rnd)
        record = {"round": rnd, "sources": list(self.data),
                  "train_loss": {"mixture": stats.loss}, "tokens": stats.tokens,
                  "tokens_per_s": stats.tokens_per_s,
                  "comm": self.ledger.round_detail(rnd)}
        if rnd % t.eval_every == 0 or rnd == t.rounds:
            record["val"] = {k: evaluate_set(self.model, s.val, self.device)
                             for k, s in self.data.items()}
        record["seconds"] = time.perf_counter() - start
        self.history.append(record)
        self.done = rnd
        return record

    def _chunks(self, start: int, end: int, total: int) -> list[tuple[int, int]]:
        """[start, end) in steps, cut after every multiple of forget_every (ACT)."""
        if not self.forget_every:
            return [(start, end)]
        cuts = [s for s in range(start + 1, end) if s % self.forget_every == 0]
        edges = [start, *cuts, end]
        return list(zip(edges, edges[1:]))

    def save(self, ckpt_dir: Path, keep: int) -> None:
        flat, groups = ck.optimizer_to_tensors(self.opt.state_dict())
        tensors = {**ck.pack("model", self.model.state_dict()), **ck.pack("opt", flat),
                   **ck.pack("rng", self.batches.state())}
        if self.cfg.model.tie_embeddings:
            tensors.pop("model/lm_head.weight", None)
        meta = {"done": self.done, "history": self.history, "opt_groups": groups,
                "ledger": self.ledger.state_dict()}
        ck.save(ckpt_dir, self.done, tensors, meta, keep)

    def restore(self, ckpt_dir: Path) -> bool:
        found = ck.load_latest(ckpt_dir)
        if found is None:
            return False
        _, tensors, meta = found
        self.model.load_state_dict(ck.unpack("model", tensors), strict=False)
        self.opt.load_state_dict(ck.optimizer_from_tensors(ck.unpack("opt", tensors),
                                                           meta["opt_groups"]))
        self.batches.set_state(ck.unpack("rng", tensors))
        self.ledger.load_state_dict(meta["ledger"])
        self.history, self.done = meta["history"], meta["done"]
        return True

    def result(self) -> RunOutcome:
        body = {k: v.cpu() for k, v in get_body(self.model).items()}
        bank = {k: v.cpu() for k, v in get_bank(self.model).items()}
        return RunOutcome(body, {k: bank for k in self.data}, bank,
                          {k: s.info() for k, s in self.data.items()}, self.history,
                          self.ledger)

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


@torch.no_grad()
def forget_embeddings(model, opt: torch.optim.Optimizer, cfg: Config, step: int) -> None:
    """ACT after optimiser step `step`: fresh token embeddings (and an untied output head),
    seeded by (training seed, step); their optimiser state is dropped (AdamW starts it anew)."""
    gen = torch.Generator().manual_seed(derived_seed(cfg.train.seed, "act", str(step)))
    vocab = model.get_input_embeddings().weight.shape[0]
    fresh = init_bank(cfg.model, vocab, gen)
    params = [("tok", model.get_input_embeddings().weight)]
    head = model.get_output_embeddings().weight
    if head is not params[0][1]:
        params.append(("head", head))
    for key, p in params:
        p.copy_(fresh[key].to(device=p.device, dtype=p.dtype))
        opt.state.pop(p, None)
