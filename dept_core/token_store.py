"""A pre-tokenised, sharded store of each source's train split (beyond the paper, which does
not say how its data was fed; at its budgets — billions of tokens per run — re-tokenising a
stream in every training process has no tested resume point and costs 8 bytes per token).

Built once by the tokenizers stage (a DVC stage: its output `data/tokenizers` holds the
stores beside the tokenizers they were encoded with), one store per (tokenizer layout,
source):

    data/tokenizers/global/tokens/<source>/     every source, the global tokenizer's ids
    data/tokenizers/subvocab/<source>/tokens/   a training source, V_k's local ids
    data/tokenizers/spec_opt/<source>/tokens/   a training source, its own tokenizer's ids

Each holds `shard-00000.bin`, ... (raw little-endian uint16 ids when the vocabulary fits
in 16 bits, else uint32) and `index.json`: dtype, vocabulary size, the tokenizer's SHA-256,
and each shard's token count and SHA-256. Concatenated, the shards are exactly
`batches.token_stream` of the split (`[eos] d1 [eos] d2 ... [eos]`), so a run reading the store
draws the same batches, bit for bit, as one tokenising on the fly (tests/test_token_store.py).

Reading: `TokenStore` maps the shards read-only (numpy memmap; the OS pages in what is read)
and answers `store[positions]` like the in-memory stream tensor, so `BatchSampler` takes
either. A rank opens only its own sources' stores, and under replicas reads only its rows of
each batch (`BatchSampler.next(rows=...)`). The read position is the sampler's seeded
generator, checkpointed every round with the rest of the run: a killed run resumes at exactly
the next batch (tests/test_replicas.py kills one under the mesh).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from dept_core.batches import EOS_ID
from dept_core.errors import DataError

INDEX = "index.json"
SHARD_TOKENS = 1 << 28  # 512 MiB of uint16 / 1 GiB of uint32 per shard
FORMAT = 1


def store_dir(tok_root: Path, layout_dir: str, source: str) -> Path:
    """Where the store of `source` under a tokenizer layout directory lives."""
    if layout_dir == "global":
        return Path(tok_root) / "global" / "tokens" / source
    return Path(tok_root) / layout_dir / source / "tokens"


def encode_in_chunks(sp, texts: Sequence[str], chunk: int = 4096) -> Iterable[list[int]]:
    """Each text's ids, encoding `chunk` texts at a time (memory stays bounded: a whole
    split's ids as Python lists would take ~36 bytes per token)."""
    for i in range(0, len(texts), chunk):
        yield from sp.encode(list(texts[i:i + chunk]), num_threads=2)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def write_store(docs: Iterable[Sequence[int]], vocab_size: int, tokenizer: Path, out: Path,
                shard_tokens: int = SHARD_TOKENS) -> dict:
    """Write `[eos] d1 [eos] d2 ... [eos]` of `docs` as shards in `out` (a fresh directory,
    inside the stage's atomic output); returns the index."""
    out.mkdir(parents=True, exist_ok=True)
    dtype = dtype_for(vocab_size)
    shards: list[dict] = []
    buf: list[np.ndarray] = []
    held = 0

    def flush(final: bool) -> None:
        nonlocal buf, held
        data = np.concatenate(buf) if buf else np.zeros(0, dtype)
        while len(data) >= shard_tokens or (final and len(data)):
            part, data = data[:shard_tokens], data[shard_tokens:]
            name = f"shard-{len(shards):05d}.bin"
            (out / name).write_bytes(part.tobytes())
            shards.append({"file": name, "tokens": int(len(part)),
                           "sha256": hashlib.sha256(part.tobytes()).hexdigest()})
        buf, held = [data], len(data)

    n_docs = 0
    for ids in docs:
        buf.append(np.asarray([EOS_ID, *ids], dtype=dtype))
        held += len(ids) + 1
        n_docs += 1
        if held >= shard_tokens:
            flush(False)
    buf.append(np.asarray([EOS_ID], dtype=dtype))
    flush(True)
    index = {"format": FORMAT, "dtype": dtype.str, "vocab_size": vocab_size, "docs": n_docs,
             "tokens": sum(s["tokens"] for s in shards), "shards": shards,
             "tokenizer_sha256": sha256_file(tokenizer)}
    (out / INDEX).write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
    return index


class TokenStore:
    """The shards of one store as one read-only token stream: `len(store)` and
    `store[positions]` (a LongTensor of any shape → int64 ids of the same shape)."""

    def __init__(self, path: Path, tokenizer: Path | None = None):
        self.path = Path(path)
        index_file = self.path / INDEX
        try:
            self.index = json.loads(index_file.read_text())
            dtype = np.dtype(self.index["dtype"])
            shards = self.index["shards"]
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"{index_file}: unreadable token store index ({exc}); rebuild it: "
                            f"dvc repro -f tokenizers (or dept tokenizers)") from None
        if tokenizer is not None and sha256_file(tokenizer) != self.index["tokenizer_sha256"]:
            raise DataError(f"{self.path}: encoded with another tokenizer than {tokenizer}; "
                            f"rebuild it: dvc repro -f tokenizers (or dept tokenizers)")
        self.maps, starts = [], [0]
        for s in shards:
            f = self.path / s["file"]
            size = f.stat().st_size if f.is_file() else -1
            if size != s["tokens"] * dtype.itemsize:
                raise DataError(f"{f}: {size} bytes, the index says {s['tokens']} tokens of "
                                f"{dtype.itemsize} bytes; rebuild the store: dvc repro -f "
                                f"tokenizers (or dept tokenizers)")
            self.maps.append(np.memmap(f, dtype=dtype, mode="r"))
            starts.append(starts[-1] + s["tokens"])
        self.starts = np.asarray(starts, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, positions: Tensor) -> Tensor:
        pos = positions.numpy() if isinstance(positions, Tensor) else np.asarray(positions)
        if len(self.maps) == 1:
            return torch.from_numpy(self.maps[0][pos].astype(np.int64))
        shard = np.searchsorted(self.starts, pos, side="right") - 1
        out = np.empty(pos.shape, dtype=np.int64)
        for k in np.unique(shard):
            sel = shard == k
            out[sel] = self.maps[k][pos[sel] - self.starts[k]]
        return torch.from_numpy(out)

    def verify(self) -> None:
        """Check every shard against its SHA-256 (reads everything: for `dept` checks)."""
        for s, m in zip(self.index["shards"], self.maps):
            if hashlib.sha256(np.asarray(m).tobytes()).hexdigest() != s["sha256"]:
                raise DataError(f"{self.path / s['file']}: contents differ from the index's "
                                f"SHA-256; rebuild the store: dvc repro -f tokenizers")
