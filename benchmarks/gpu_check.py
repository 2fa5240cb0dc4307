"""The prepared GPU check: what a short loan of one GPU should measure, in one table.

    bash benchmarks/gpu_check.sh            # on a GPU machine: ≤ 8 minutes on one 80 GB card
    bash benchmarks/gpu_check.sh --dry-run  # the same steps at toy size on the CPU (tests run it)

Steps:
  1. environment: torch, CUDA, the card, bf16, NCCL, free disk;
  2. the 125M preset's inner loop (configs/paper-125m.yaml: d 768 × 12 blocks, |V| 250 112,
     2048-token sequences, the recipe's batch of 256 in micro-batches of 16), bf16 autocast and
     fused AdamW, with torch.compile of each block off and on: tokens/s, MFU against the card's
     dense bf16 peak, peak memory against benchmarks/paper_scale.py's estimate. The batches are
     windows of the embedded corpus's real text (bytes as ids): throughput does not depend on
     which ids flow, and no tokenizer of 250 k pieces can be trained on 2.7 MB;
  3. the 2-rank torchrun backend (benchmarks/distributed.py's run: 2 sources on 2 ranks, Gloo
     on the CPU), against the in-process backend; and the mesh path: the same 2 ranks as one
     source group of 2 FSDP2 replicas (dept_core.replicas).
The dry run keeps every step and swaps the sizes (tiny model, 64-token sequences, batch 8 in
micro-batches of 4, 2 steps) so that the script cannot rot unnoticed between GPU loans.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import paper_scale  # noqa: E402  (benchmarks/paper_scale.py: shapes and the memory estimate)
import torch  # noqa: E402
import yaml  # noqa: E402

from dept_core.accel import compile_blocks  # noqa: E402
from dept_core.config_io import validate  # noqa: E402
from dept_core.model import build_model  # noqa: E402
from dept_core.trainer import local_train, make_optimizer  # noqa: E402

# Dense bf16 peak FLOP/s by card name (vendor data sheets, no sparsity).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "cuda": torch.version.cuda or "-",
           "device": device.type, "disk_free_gb": shutil.disk_usage(REPO).free / 1e9}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(card=props.name, memory_gb=props.total_memory / 1e9,
                   bf16=torch.cuda.is_bf16_supported(),
                   nccl=torch.distributed.is_nccl_available())
    else:
        env.update(card="cpu", threads=torch.get_num_threads())
    return env


def peak_flops(env: dict) -> float | None:
    return next((v for k, v in PEAK_BF16.items() if k in env.get("card", "")), None)


class Windows:
    """Random windows of real text (the embedded English corpus, bytes as ids < vocab)."""

    def __init__(self, vocab: int, batch: int, seq: int, seed: int = 0):
        with gzip.open(REPO / "corpus/multilingual/en.jsonl.gz", "rt", encoding="utf-8") as f:
            text = "\n".join(json.loads(line)["text"] for line in f).encode("utf-8")
        self.ids = torch.tensor(list(text), dtype=torch.long) % vocab
        self.batch, self.seq = batch, seq
        self.g = torch.Generator().manual_seed(seed)

    def next(self):
        start = torch.randint(0, len(self.ids) - self.seq - 1, (self.batch,), generator=self.g)
        return torch.stack([self.ids[s:s + self.seq + 1] for s in start.tolist()])


def preset(dry: bool):
    raw = yaml.safe_load((REPO / "configs/paper-125m.yaml").read_text())
    if dry:
        raw["model"].update(size="tiny", max_seq_len=64)
        raw["train"].update(seq_len=64, batch_size=8, micro_batch_size=4, device="cpu",
                            compile=False)
        raw["tokenizers"]["global_vocab_size"] = 1000
    return validate(raw)


def flops_per_token(cfg, vocab: int) -> float:
    """paper_scale.flops_per_token of the preset's model over `vocab`."""
    return paper_scale.flops_per_token(cfg.model, cfg.train.seq_len,
                                       *paper_scale.shapes(cfg, vocab))


def inner_loop(cfg, device: torch.device, compiled: bool, steps: int) -> dict:
    t, vocab = cfg.train, cfg.tokenizers.global_vocab_size
    model = build_model(cfg.model, vocab, t.seed).to(device)
    if compiled:  # on the CPU (dry run) dynamo traces but inductor's C++ build is skipped
        compile_blocks(model, **({"backend": "aot_eager"} if device.type == "cpu" else {}))
    opt = make_optimizer(model, t)  # fused AdamW on CUDA
    batches = Windows(vocab, t.batch_size, t.seq_len)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    warm = local_train(model, opt, batches, 1, 0, lambda s: t.lr, t.grad_clip, device,
                       micro_batch=t.micro_batch_size)  # compiles, allocates
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    stats = local_train(model, opt, batches, steps, 1, lambda s: t.lr, t.grad_clip, device,
                        micro_batch=t.micro_batch_size)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"tokens_per_s": stats.tokens / seconds, "seconds": seconds, "peak_gib": peak,
            "first_step_s": warm.seconds, "loss": stats.loss}


def torchrun_check(dry: bool, mesh: bool = False) -> dict:
    cmd = [sys.executable, str(REPO / "benchmarks/distributed.py"), "--variant", "spec",
           "--rounds", "1" if dry else "2", "--local-steps", "2" if dry else "10",
           "--size", "tiny" if dry else "demo"]
    if mesh:
        cmd += ["--replicas", "2", "--strategy", "fsdp2"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    ok = proc.returncode == 0
    return {"ok": ok, "seconds": time.perf_counter() - start,
            "tail": (proc.stdout if ok else proc.stderr).strip().splitlines()[-3:]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per setting")
    ap.add_argument("--no-torchrun", action="store_true")
    a = ap.parse_args()
    device = torch.device("cpu" if a.dry_run or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not a.dry_run:
        print("gpu_check: no CUDA device here; use --dry-run on a CPU", file=sys.stderr)
        return 2
    env = environment(device)
    print("environment: " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                                      for k, v in env.items()))
    cfg = preset(a.dry_run)
    steps = a.steps or (2 if a.dry_run else 4)
    vocab = cfg.tokenizers.global_vocab_size
    fpt = flops_per_token(cfg, vocab)
    # benchmarks/paper_scale.py's estimate: fp32 weights, grads, AdamW (16 bytes/parameter)
    # plus the activations of one micro-batch
    estimate = (sum(paper_scale.shapes(cfg, vocab)) * 16
                + paper_scale.activations(cfg, vocab)) / 2**30
    peak = peak_flops(env)
    rows = []
    for compiled in (False, True):
        r = inner_loop(cfg, device, compiled, steps)
        mfu = fpt * r["tokens_per_s"] / peak if peak else None
        rows.append((compiled, r, mfu))
    tr = None if a.no_torchrun else torchrun_check(a.dry_run)
    mesh = None if a.no_torchrun else torchrun_check(a.dry_run, mesh=True)
    d = cfg.model.dims()
    print(f"\nmodel d {d['d_model']} x {d['n_layers']} blocks, |V| {vocab}, batch "
          f"{cfg.train.batch_size} x {cfg.train.seq_len} in micro-batches of "
          f"{cfg.train.micro_batch_size}, {steps} timed steps, "
          f"{'bf16 autocast, fused AdamW' if device.type == 'cuda' else 'fp32 (CPU)'}")
    print(f"{'check':28s} {'tokens/s':>10s} {'MFU':>6s} {'peak GiB':>9s} {'estimate GiB':>13s} "
          f"{'1st step s':>10s} {'loss':>6s}")
    for compiled, r, mfu in rows:
        name = "inner loop, compile " + ("on" if compiled else "off")
        mfu_s = f"{100 * mfu:.1f}%" if mfu else "-"
        mem_s = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "-"
        print(f"{name:28s} {r['tokens_per_s']:10.0f} {mfu_s:>6s} {mem_s:>9s} "
              f"{estimate:13.1f} {r['first_step_s']:10.1f} {r['loss']:6.2f}")
    for name, check in (("torchrun, 2 ranks (gloo)", tr), ("mesh 1x2 fsdp2 (gloo)", mesh)):
        if check is None:
            continue
        print(f"{name:28s} {'ok' if check['ok'] else 'FAILED':>10s} "
              f"{'':6s} {'':9s} {'':13s} {check['seconds']:10.1f}")
        for line in check["tail"]:
            print("    " + line)
    failed = any(c is not None and not c["ok"] for c in (tr, mesh)) or any(
        not torch.isfinite(torch.tensor(r["loss"])) for _, r, _ in rows)
    print("gpu_check: " + ("FAILED" if failed else "ok"))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
