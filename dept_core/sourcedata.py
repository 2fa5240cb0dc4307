"""Each source's tokens as a variant sees them (which tokenizer, which vocabulary).

The variant's tokenizer layout (`dept_core.variants`) decides:

| layout    | tokenizer of source k (under data/tokenizers/) | vocabulary      | e.g.       |
|-----------|------------------------------------------------|-----------------|------------|
| global    | the global one (global/)                       | V               | glob, std  |
| subvocab  | the global one restricted to V_k (subvocab/k/) | V_k (local ids) | trim, spec |
| own       | the source's own (spec_opt/k/)                 | its own         | spec_opt   |
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from dept_core import tokenizers as tk
from dept_core.batches import cap_docs, eval_windows, token_stream
from dept_core.data import read_split
from dept_core.errors import DataError
from dept_core.variants import Layout

LAYOUT_DIRS = {"global": "global", "subvocab": "subvocab", "own": "spec_opt"}


@dataclass(frozen=True)
class SourceInfo:
    """What a run's outputs need to know of a source (small; gathered across ranks)."""

    name: str
    tokenizer_dir: Path
    vocab_size: int
    train_tokens: int


@dataclass
class SourceData:
    name: str
    tokenizer_dir: Path
    vocab_size: int
    train: Tensor           # the train split as one token stream
    val: Tensor             # evaluation windows over the (capped) validation split
    val_bytes: int
    global_ids: Tensor | None  # local id -> global id (subvocab layout), else None

    @property
    def train_tokens(self) -> int:
        return len(self.train)

    def info(self) -> SourceInfo:
        return SourceInfo(self.name, self.tokenizer_dir, self.vocab_size, self.train_tokens)


def tokenizer_dir(tok_root: Path, layout: Layout, source: str) -> Path:
    if layout == "global":
        return Path(tok_root) / LAYOUT_DIRS[layout]
    return Path(tok_root) / LAYOUT_DIRS[layout] / source


def encode_split(tok_dir: Path, prepared: Path, source: str, split: str,
                 max_tokens: int | None = None) -> tuple[Tensor, int]:
    """(token stream, UTF-8 bytes) of a split; `max_tokens` caps it at whole documents."""
    model = tok_dir / "spm.model"
    if not model.is_file():
        raise DataError(f"{model}: missing — run the tokenizers stage first (dept tokenizers)")
    sp = tk.load(model)
    texts = read_split(prepared, source, split)
    docs = tk.encode_docs(sp, texts)
    if max_tokens is not None:
        docs, n_bytes = cap_docs(texts, docs, max_tokens)
    else:
        n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    return token_stream(docs), n_bytes


def load_sources(layout: Layout, sources: list[str], prepared: Path, tok_root: Path,
                 seq_len: int, eval_tokens: int) -> dict[str, SourceData]:
    """Each source's train stream and validation windows as tokenizer `layout` reads them
    (a variant's `dept_core.variants.get(name).tokenizer`)."""
    out = {}
    for name in sources:
        tdir = tokenizer_dir(tok_root, layout, name)
        train, _ = encode_split(tdir, prepared, name, "train")
        if len(train) < seq_len + 2:
            raise DataError(f"source '{name}': {len(train)} training tokens, fewer than "
                            f"train.seq_len + 2 = {seq_len + 2}")
        val, val_bytes = encode_split(tdir, prepared, name, "val", eval_tokens)
        ids = None
        if layout == "subvocab":
            ids = torch.tensor(tk.read_subvocab(tdir), dtype=torch.long)
        out[name] = SourceData(name, tdir, tk.load(tdir / "spm.model").get_piece_size(),
                               train, eval_windows(val, seq_len), val_bytes, ids)
    return out
