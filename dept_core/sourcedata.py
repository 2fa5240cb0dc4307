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
from dept_core.batches import EvalSet, eval_set, token_stream
from dept_core.data import read_split
from dept_core.errors import DataError
from dept_core.token_store import INDEX, TokenStore, store_dir
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
    train: Tensor | TokenStore  # the train split as one token stream (in memory or mapped)
    val: EvalSet            # the validation split, as evaluation windows
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


def _split_ids(tok_dir: Path, prepared: Path, source: str, split: str
               ) -> tuple[list[str], list[list[int]]]:
    model = Path(tok_dir) / "spm.model"
    if not model.is_file():
        raise DataError(f"{model}: missing — run the tokenizers stage first (dept tokenizers)")
    texts = read_split(prepared, source, split)
    return texts, tk.encode_docs(tk.load(model), texts)


def train_stream(tok_dir: Path, prepared: Path, source: str) -> Tensor:
    """The train split as one token stream `[eos] d1 [eos] d2 [eos] ...`."""
    return token_stream(_split_ids(tok_dir, prepared, source, "train")[1])


def stored_or_encoded(tok_root: Path, layout: Layout, source: str, prepared: Path
                      ) -> Tensor | TokenStore:
    """The train stream from the tokenizers stage's pre-tokenised store when it has one
    (`dept_core.token_store`: the same ids, memory-mapped), else encoded now."""
    tdir = tokenizer_dir(tok_root, layout, source)
    store = store_dir(tok_root, LAYOUT_DIRS[layout], source)
    if (store / INDEX).is_file() and (tdir / "spm.model").is_file():
        return TokenStore(store, tdir / "spm.model")
    return train_stream(tdir, prepared, source)


def split_eval_set(tok_dir: Path, prepared: Path, source: str, split: str,
                   seq_len: int) -> EvalSet:
    """A whole split (every document: all variants see the same ones) as evaluation windows."""
    texts, docs = _split_ids(tok_dir, prepared, source, split)
    return eval_set(docs, texts, seq_len)


def load_sources(layout: Layout, sources: list[str], prepared: Path, tok_root: Path,
                 seq_len: int) -> dict[str, SourceData]:
    """Each source's train stream and validation windows as tokenizer `layout` reads them
    (a variant's `dept_core.variants.get(name).tokenizer`)."""
    out = {}
    for name in sources:
        tdir = tokenizer_dir(tok_root, layout, name)
        train = stored_or_encoded(tok_root, layout, name, prepared)
        if len(train) < seq_len + 2:
            raise DataError(f"source '{name}': {len(train)} training tokens, fewer than "
                            f"train.seq_len + 2 = {seq_len + 2}")
        val = split_eval_set(tdir, prepared, name, "val", seq_len)
        ids = None
        if layout == "subvocab":
            ids = torch.tensor(tk.read_subvocab(tdir), dtype=torch.long)
        out[name] = SourceData(name, tdir, tk.load(tdir / "spm.model").get_piece_size(),
                               train, val, ids)
    return out
