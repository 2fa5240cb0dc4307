"""Inner-loop throughput: a DEPT local round against a bare PyTorch/transformers loop.

    python benchmarks/throughput.py [--size demo] [--steps 20] [--reps 7] [--variant glob]

Same process, model (the same HF Llama config and initial weights), batch shape, optimiser
(AdamW, same hyper-parameters, gradient clipping) and device. The DEPT side is one whole round
of `dept_core.rounds.DeptRun.run_round` with one sampled source (download θ and the bank, N_local
inner steps in `trainer.local_train`, Δθ, upload, outer step, aggregation: paper Algorithm 1);
the bare side is the loop one writes by hand. Repetitions alternate between the two (ABBA...)
so that load from other processes hits both alike; tokens/s are medians over repetitions.
"""

from __future__ import annotations

import argparse
import time

from common import median, smoke_raw  # noqa: F401  (sets sys.path)

import torch  # noqa: E402
from torch import nn  # noqa: E402

from dept_core.batches import BatchSampler, EvalSet, derived_seed  # noqa: E402
from dept_core.accel import tune_host_allocator  # noqa: E402
from dept_core.config_io import validate  # noqa: E402
from dept_core.model import build_model  # noqa: E402
from dept_core.run import build_run  # noqa: E402
from dept_core.sourcedata import SourceData  # noqa: E402


def config(size: str, steps: int, batch: int, seq: int, vocab: int):
    raw = smoke_raw(rounds=10_000, local_steps=steps, batch_size=batch, seq_len=seq,
                    sources_per_round=1, eval_every=10_000, warmup_steps=0)
    raw["data"]["sources"] = [{"name": "src", "kind": "embedded", "preset": "multilingual",
                               "item": "en"}]
    raw["tokenizers"]["per_source_vocab_overrides"] = {}
    raw["model"] = {"size": size, "max_seq_len": seq}
    return validate(raw), vocab


def source(vocab: int, seq: int, n_tokens: int = 400_000) -> SourceData:
    g = torch.Generator().manual_seed(0)
    stream = torch.randint(4, vocab, (n_tokens,), generator=g)
    # one validation "document" (the round's evaluation is not timed: eval_every is large)
    val = EvalSet(stream[: seq + 1].unsqueeze(0), torch.zeros(1, seq, dtype=torch.long), [seq])
    return SourceData("src", None, vocab, stream, val, None)


class Dept:
    """One DEPT round per call, through the rounds machinery (the production path)."""

    def __init__(self, cfg, variant: str, vocab: int):
        self.cfg = cfg
        self.run = build_run(cfg, variant, {"src": source(vocab, cfg.train.seq_len)}, vocab,
                             torch.device("cpu"))

    def __call__(self) -> int:
        self.run.run_round()
        return self.cfg.train.local_steps * self.cfg.train.batch_size * self.cfg.train.seq_len


class Bare:
    """The same work written by hand: forward, loss, backward, clip, AdamW step."""

    def __init__(self, cfg, vocab: int):
        t = cfg.train
        self.cfg, self.model = cfg, build_model(cfg.model, vocab, cfg.seed)
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        rest = [p for p in self.model.parameters() if p.dim() < 2]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay},
                                      {"params": rest, "weight_decay": 0.0}],
                                     lr=t.lr, betas=tuple(t.betas))
        self.sampler = BatchSampler(source(vocab, t.seq_len).train, t.seq_len, t.batch_size,
                                    derived_seed(0, "bare"))

    def __call__(self) -> int:
        t = self.cfg.train
        for _ in range(t.local_steps):
            batch = self.sampler.next()
            logits = self.model(input_ids=batch[:, :-1]).logits
            loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                               batch[:, 1:].reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        return t.local_steps * t.batch_size * t.seq_len


def measure(size="demo", steps=20, batch=16, seq=128, vocab=6000, reps=7, variant="glob",
            log=print) -> dict:
    cfg, vocab = config(size, steps, batch, seq, vocab)
    tune_host_allocator(cfg)  # as the pipeline's training does, for both loops alike
    dept, bare = Dept(cfg, variant, vocab), Bare(cfg, vocab)
    dept(), bare()  # warm-up (allocator, first-call overheads)
    rates: dict[str, list[float]] = {"dept": [], "bare": []}
    for rep in range(reps):
        order = [("dept", dept), ("bare", bare)]
        for name, fn in (order if rep % 2 == 0 else order[::-1]):
            t = time.perf_counter()
            tokens = fn()
            rates[name].append(tokens / (time.perf_counter() - t))
        log(f"  rep {rep + 1}: dept {rates['dept'][-1]:8.0f} tok/s   "
            f"bare {rates['bare'][-1]:8.0f} tok/s")
    out = {k: median(v) for k, v in rates.items()}
    out["ratio"] = out["dept"] / out["bare"]
    out["pairwise_ratio"] = median([d / b for d, b in zip(rates["dept"], rates["bare"])])
    out["params"] = sum(p.numel() for p in bare.model.parameters())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="demo")
    ap.add_argument("--steps", type=int, default=20, help="N_local (params.yaml: 20)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=6000, help="params.yaml global vocabulary")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--variant", default="glob", choices=["glob", "trim", "spec"])
    a = ap.parse_args()
    print(f"model {a.size}, batch {a.batch}x{a.seq}, N_local {a.steps}, vocab {a.vocab}, "
          f"{torch.get_num_threads()} threads, variant {a.variant}")
    r = measure(a.size, a.steps, a.batch, a.seq, a.vocab, a.reps, a.variant)
    print(f"{'loop':28s} {'tokens/s (median)':>18s}")
    print(f"{'bare PyTorch/transformers':28s} {r['bare']:18.0f}")
    print(f"{'DEPT round (run_round)':28s} {r['dept']:18.0f}")
    print(f"ratio DEPT/bare: {r['ratio']:.3f} (median of pairwise ratios {r['pairwise_ratio']:.3f})"
          f"  {'OK' if r['ratio'] >= 0.95 else 'BELOW 0.95'}")


if __name__ == "__main__":
    main()
