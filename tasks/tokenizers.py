"""Tasks of the tokenizers stage."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from dept_core import tokenizers as tk
from dept_core.atomic import atomic_dir, write_json
from dept_core.data import read_split
from dept_core import diskspace
from tasks.common import IO_RETRIES, NO_CACHE


@task(name="read-splits", **IO_RETRIES, **NO_CACHE)
def read_splits_task(prepared_dir: Path, sources: list[str], split: str) -> dict[str, list[str]]:
    return {name: read_split(prepared_dir, name, split) for name in sources}


@task(name="train-tokenizer", task_run_name="train-tokenizer-{spec.name}", **NO_CACHE)
def train_tokenizer_task(spec: tk.TrainSpec) -> bytes:
    model = tk.train_sentencepiece(spec)
    get_run_logger().info("%s: %d pieces (%s)", spec.name, spec.vocab_size, spec.model_type)
    return model


@task(name="write-tokenizers", **IO_RETRIES, **NO_CACHE)
def write_tokenizers_task(cfg, train_texts, val_texts, global_model: bytes,
                          spec_opt_models: dict[str, bytes], out_dir: Path,
                          stats_path: Path) -> dict:
    """Sub-vocabularies, HF exports and statistics, swapped into place atomically."""
    # each model is written with its HF export (~3× its size), per source twice (V_k, own)
    # and the pre-tokenised train splits: ≤ 4 bytes per token, ~1 token per 3 bytes of text,
    # in up to 3 layouts
    text = sum(len(t.encode("utf-8")) for texts in train_texts.values() for t in texts)
    diskspace.expect(4 * (len(global_model) * (1 + len(spec_opt_models))
                          + sum(len(m) for m in spec_opt_models.values())) + 4 * text)
    with atomic_dir(out_dir) as tmp:
        stats = tk.assemble(cfg, train_texts, val_texts, global_model, spec_opt_models, tmp)
    write_json(stats_path, stats)
    for name, entry in stats["subvocab"].items():
        get_run_logger().info("|V_%s| = %d of %d", name, entry["vocab_size"],
                              entry["global_vocab_size"])
    return stats
