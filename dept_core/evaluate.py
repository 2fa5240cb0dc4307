"""Evaluation of exported models on the test splits: perplexity and bits per UTF-8 byte.

In distribution: each training source with its own exported model (body + its embeddings +
its tokenizer). Out of distribution: held-out sources with the global model (GLOB, TRIM, STD);
SPEC and SPEC-OPT have no global embedding — the paper compares their bodies after continued
pre-training with a fresh embedding (§4), which is a later stage.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dept_core.batches import eval_windows
from dept_core.export import check_model_dir
from dept_core.sourcedata import encode_split
from dept_core.trainer import evaluate_windows


def evaluate_model_dir(model_dir: Path, prepared: Path, source: str, split: str,
                       seq_len: int, max_tokens: int | None = None) -> dict[str, float]:
    """Loss, perplexity and bits/byte of an exported HF model directory on a split."""
    from transformers import AutoModelForCausalLM

    check_model_dir(model_dir)  # a tokenizer that does not fit the model: one clear error
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True)
    stream, n_bytes = encode_split(Path(model_dir), prepared, source, split, max_tokens)
    return evaluate_windows(model, eval_windows(stream, seq_len), n_bytes, torch.device("cpu"))


def evaluate_variant(models_dir: Path, prepared: Path, train_sources: list[str],
                     heldout: list[str], seq_len: int, max_tokens: int | None = None) -> dict:
    models_dir = Path(models_dir)
    out: dict = {"in_distribution": {}, "out_of_distribution": {}}
    for src in train_sources:
        if (models_dir / src).is_dir():  # a SPEC source never sampled has no model
            out["in_distribution"][src] = evaluate_model_dir(models_dir / src, prepared, src,
                                                             "test", seq_len, max_tokens)
    if (models_dir / "global").is_dir():
        for src in heldout:
            out["out_of_distribution"][src] = evaluate_model_dir(
                models_dir / "global", prepared, src, "test", seq_len, max_tokens)
    for key in ("in_distribution", "out_of_distribution"):
        vals = [v["bpb"] for v in out[key].values()]
        out[f"{key}_bpb_mean"] = sum(vals) / len(vals) if vals else None
    return out
