"""Parameters, embedding memory, communication and per-GPU memory of the paper-scale presets,
computed on PyTorch's meta device (no weight is allocated: seconds on a CPU).

    python benchmarks/paper_scale.py [--trim-share 0.86] [--mfu 0.4] [--peak 989e12]
                                     [--replicas 2]

Per preset (configs/paper-*.yaml) and variant it prints:
  * parameters: the body and the token embedding of the global vocabulary (and SPEC-OPT's
    per-source one);
  * embedding memory per source (fp32);
  * communication per round and per inner step, in parameters, per source (up + down are
    counted as the paper counts them: one direction, Table 1), and STD's per-step all-reduce;
  * expected per-GPU memory for one source per GPU at the preset's micro-batch: fp32 weights,
    grads, AdamW's two moments, and activations (bf16; Korthikanti et al. 2022's 34·s·b·h bytes
    per block without recomputation, the 5·a·s²·b of attention scores where they are
    materialised (MPT's ALiBi), the logits in bf16 and their fp32 copy for the loss).
  * the same under a mesh of R replicas per source with FSDP2 (`train.replicas_per_source`,
    dept_core/replicas.py): weights, grads and AdamW sharded R ways, plus what is gathered
    whole at a time (the root unit — embeddings, head — and two blocks: the one computing and
    the one prefetched), activations unchanged (each replica's micro-batch);
  * the wall time of one round per GPU (one source per GPU: N_local × batch × sequence
    tokens) at an assumed MFU of the card's dense bf16 peak (6·N + 12·L·d·T FLOPs per token),
    until benchmarks/gpu_check.sh measures tokens/s on a real card; and with R replicas,
    that time / R (each replica computes 1/R of every batch; the per-step gradient
    reduce-scatter is not counted).
Then the ratio to the paper's own figures (DEPT, ICLR 2025: §4-5 and the appendix).

TRIM's volume depends on |V_k|, which only the data gives (each source's sub-vocabulary of
the global tokenizer). `--trim-share` sets |V_k|/|V| (default 0.86: the share that reproduces
the paper's 0.5 M against GLOB's 0.56 M on the 12-block model; the demo's tokenizers give
0.29-0.38 over 6 000 pieces, a small vocabulary over 6 languages): the TRIM row is reported
as the assumption it is.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml

from dept_core.config_io import validate
from dept_core.model import bank_param_ids, hf_config

REPO = Path(__file__).resolve().parent.parent
PRESETS = ["paper-125m", "paper-350m", "paper-1.3b", "paper-pile-350m"]
VARIANTS = ["std", "glob", "trim", "spec", "spec_opt"]
GIB = 2**30

# The paper's figures, in parameters (DEPT, ICLR 2025): communication per inner step and the
# embedding matrix of the 1.3B model with mT5's vocabulary against SPEC-OPT's 50 257 pieces.
PAPER = [
    ("paper-1.3b", "comm/step std", 1.71e9),
    ("paper-1.3b", "comm/step spec_opt", 2.4e6),
    ("paper-1.3b", "embedding (global)", 512.2e6),
    ("paper-1.3b", "embedding (spec_opt)", 102.9e6),
    ("paper-125m", "comm/step std", 278e6),
    ("paper-125m", "comm/step glob", 0.56e6),
    ("paper-125m", "comm/step trim", 0.5e6),
    ("paper-125m", "comm/step spec", 0.17e6),
]


def shapes(cfg, vocab: int) -> tuple[int, int]:
    """(body parameters, token-embedding parameters) of a model over `vocab` (`cfg`: a Config
    or its ModelConfig), built on the meta device."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config(getattr(cfg, "model", cfg), vocab))
    bank = bank_param_ids(model)
    body = sum(p.numel() for p in model.parameters() if id(p) not in bank)
    emb = model.get_input_embeddings().weight.numel()
    return body, emb


def activations(cfg, vocab: int) -> int:
    """Bytes of activations kept for backward at the micro-batch (bf16), per GPU: 34·s·b·h
    per block, plus 5·a·s²·b per block where attention is computed eagerly (transformers' MPT
    adds the ALiBi bias to materialised scores; Llama and GPT-2 use SDPA's fused kernels),
    plus the logits in bf16 and their fp32 copy for the loss."""
    d, t = cfg.model.dims(), cfg.train
    b, s, h = t.micro_batch_size or t.batch_size, t.seq_len, d["d_model"]
    blocks = 34 * s * b * h * d["n_layers"]
    if cfg.model.family == "mpt":
        blocks += 5 * d["n_heads"] * s * s * b * d["n_layers"]
    logits = s * b * vocab * (2 + 4)
    return blocks + logits


def largest_block(cfg, vocab: int) -> int:
    """Parameters of one transformer block (FSDP2 gathers one at a time, plus a prefetch)."""
    from transformers import AutoModelForCausalLM

    from dept_core.accel import transformer_blocks

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config(cfg.model, vocab))
    return max(sum(p.numel() for p in b.parameters()) for b in transformer_blocks(model))


def flops_per_token(mcfg, seq_len: int, body: int, emb: int) -> float:
    """Training FLOPs per token, PaLM's convention: 6·N + 12·L·d·T, N = body + the (tied)
    output projection |V|·d. The one formula of the benchmarks (gpu_check.py, mfu.py)."""
    d = mcfg.dims()
    return 6 * (body + emb) + 12 * d["n_layers"] * d["d_model"] * seq_len


def table(trim_share: float, mfu: float = 0.4, peak: float = 989e12, replicas: int = 2
          ) -> tuple[list[dict], dict]:
    rows, figures = [], {}
    for name in PRESETS:
        cfg = validate(yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text()))
        t, vocab, vk_opt = cfg.train, cfg.tokenizers.global_vocab_size, \
            cfg.tokenizers.per_source_vocab_size
        body, emb = shapes(cfg, vocab)
        _, emb_opt = shapes(cfg, vk_opt)
        d = cfg.model.dims()["d_model"]
        block = largest_block(cfg, vocab)
        full = body + emb
        n_local = t.local_steps
        for v in VARIANTS:
            own = emb_opt if v == "spec_opt" else emb
            if v == "std":  # gradients of the whole model all-reduced every step
                per_step = full
                per_round = full * n_local
            else:  # Table 1, one direction per source per round
                sent = {"glob": full, "trim": body + int(trim_share * vocab) * d,
                        "spec": body, "spec_opt": body}[v]
                per_round, per_step = sent, sent / n_local
            emb_mem = (int(trim_share * vocab) * d if v == "trim" else own) * 4
            model_params = body + own
            act = activations(cfg, vk_opt if v == "spec_opt" else vocab)
            gpu = model_params * (4 + 4 + 8) + act
            # FSDP2 over R replicas: state sharded; gathered whole: root unit + 2 blocks (fp32)
            sharded = model_params * (4 + 4 + 8) / replicas + (own + 2 * block) * 4 + act
            tokens = n_local * t.batch_size * t.seq_len  # one source's round
            tok_s = mfu * peak / flops_per_token(cfg.model, t.seq_len, body, own)  # per GPU
            round_h = tokens / tok_s / 3600
            rows.append({"preset": name, "variant": v, "body": body, "embedding": own,
                         "emb_mb_per_source": emb_mem / 2**20, "comm_per_round": per_round,
                         "comm_per_step": per_step, "gpu_gib": gpu / GIB,
                         "fsdp2_gib": sharded / GIB, "round_h_replicas": round_h / replicas,
                         "tok_s": tok_s,
                         "act_gib": act / GIB, "micro": t.micro_batch_size or t.batch_size,
                         "round_h": round_h})
            figures[(name, f"comm/step {v}")] = per_step
        figures[(name, "embedding (global)")] = emb
        figures[(name, "embedding (spec_opt)")] = emb_opt
    return rows, figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trim-share", type=float, default=0.86,
                    help="|V_k|/|V| assumed for TRIM (the data decides it)")
    ap.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOP utilisation")
    ap.add_argument("--peak", type=float, default=989e12,
                    help="the card's dense bf16 FLOP/s (H100/H200: 989e12)")
    ap.add_argument("--replicas", type=int, default=2,
                    help="R of the mesh columns: GPUs per source (FSDP2)")
    args = ap.parse_args()
    rows, figures = table(args.trim_share, args.mfu, args.peak, args.replicas)
    r_ = args.replicas
    print(f"{'preset':16s} {'variant':9s} {'body M':>8s} {'emb M':>8s} {'emb MB/src':>10s} "
          f"{'comm/round M':>12s} {'comm/step M':>11s} {'GPU GiB':>8s} {'(act.)':>7s} micro "
          f"{'tok/s':>6s} {'round h':>7s} {f'GiB x{r_}':>7s} {f'h x{r_}':>6s}")
    for r in rows:
        print(f"{r['preset']:16s} {r['variant']:9s} {r['body'] / 1e6:8.1f} "
              f"{r['embedding'] / 1e6:8.1f} {r['emb_mb_per_source']:10.0f} "
              f"{r['comm_per_round'] / 1e6:12.1f} {r['comm_per_step'] / 1e6:11.3f} "
              f"{r['gpu_gib']:8.1f} {r['act_gib']:7.1f} {r['micro']:5d} "
              f"{r['tok_s'] / 1e3:5.0f}k {r['round_h']:7.2f} "
              f"{r['fsdp2_gib']:7.1f} {r['round_h_replicas']:6.2f}")
    print(f"(tok/s, round h: one source on one GPU at {args.mfu:.0%} MFU of "
          f"{args.peak / 1e12:.0f} TFLOP/s; GPU GiB: weights, grads, AdamW, activations; "
          f"x{r_}: the same source on {r_} GPUs, FSDP2)")
    print(f"\nagainst the paper (parameters; TRIM at |V_k|/|V| = {args.trim_share}):")
    print(f"{'preset':12s} {'figure':22s} {'here':>12s} {'paper':>12s} {'ratio':>6s}")
    for name, fig, paper in PAPER:
        here = figures[(name, fig)]
        print(f"{name:12s} {fig:22s} {here:12.4g} {paper:12.4g} {here / paper:6.3f}")


if __name__ == "__main__":
    main()
