"""Token streams, training batches and evaluation windows.

A source's split becomes one stream `[eos] d1 [eos] d2 [eos] ...`: the leading `eos` marks a
document start, so every text token is predicted. Training batches are random windows of
`seq_len + 1` tokens drawn with the source's own seeded generator (its state is checkpointed,
so a resumed run draws exactly the batches an uninterrupted one would).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

EOS_ID = 2
IGNORE = -100


def token_stream(docs: Sequence[Sequence[int]], eos: int = EOS_ID) -> Tensor:
    parts = []
    for ids in docs:
        parts.append(eos)
        parts.extend(ids)
    parts.append(eos)
    return torch.tensor(parts, dtype=torch.long)


def derived_seed(seed: int, *names: str) -> int:
    """A stable 63-bit seed for (seed, name...), independent of Python's hash randomisation."""
    digest = hashlib.sha256("\0".join([str(seed), *names]).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class BatchSampler:
    """Random `batch_size × (seq_len + 1)` windows of a stream, from a seeded generator.

    The stream is a token tensor or a memory-mapped `token_store.TokenStore` (same ids, same
    batches)."""

    def __init__(self, stream, seq_len: int, batch_size: int, seed: int):
        if len(stream) < seq_len + 2:
            raise ValueError(f"stream of {len(stream)} tokens is shorter than seq_len + 2")
        self.stream, self.seq_len, self.batch_size = stream, seq_len, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def next(self, n: int | None = None, rows: slice | None = None) -> Tensor:
        """The next batch of `n` (default batch_size) windows; with `rows`, only those rows
        of it are read (a replica's share: the generator still draws the whole batch, so
        every replica's sampler stays in the same state)."""
        high = len(self.stream) - self.seq_len
        n = self.batch_size if n is None else n
        starts = torch.randint(0, high, (n,), generator=self.generator)
        if rows is not None:
            starts = starts[rows]
        offsets = torch.arange(self.seq_len + 1)
        return self.stream[starts.unsqueeze(1) + offsets]

    def state(self) -> Tensor:
        return self.generator.get_state()

    def set_state(self, state: Tensor) -> None:
        self.generator.set_state(state)


def source_probs(tokens: Sequence[int], tau: float) -> Tensor:
    """p_k ∝ n_k^τ (τ = 0: uniform, τ = 1: proportional to the tokens n_k)."""
    w = torch.tensor(list(tokens), dtype=torch.float64) ** tau
    return w / w.sum()


class MixtureSampler:
    """Batches of `n` sequences from a mixture: each sequence's source is drawn with
    probability p_k ∝ n_k^τ, then a window of that source (STD's batches, and CPT's).

    `batch_tag` and `mixture_tag` name the seeds (per-source windows, source draws), so two
    samplers over the same data (pre-training, continued pre-training) draw different batches.
    """

    def __init__(self, streams: dict[str, Tensor], seq_len: int, n: int, tau: float,
                 seed: int, batch_tag: str, mixture_tag: str):
        self.samplers = {k: BatchSampler(s, seq_len, n, derived_seed(seed, batch_tag, k))
                         for k, s in streams.items()}
        self.probs = source_probs([len(s) for s in streams.values()], tau)
        self.rng = torch.Generator().manual_seed(derived_seed(seed, mixture_tag))
        self.n = n

    def next(self) -> Tensor:
        picks = torch.multinomial(self.probs, self.n, replacement=True, generator=self.rng)
        counts = torch.bincount(picks, minlength=len(self.samplers)).tolist()
        return torch.cat([s.next(c) for s, c in zip(self.samplers.values(), counts) if c])

    def state(self) -> dict[str, Tensor]:
        return {"mixture": self.rng.get_state(),
                **{f"batches/{k}": s.state() for k, s in self.samplers.items()}}

    def set_state(self, state: dict[str, Tensor]) -> None:
        self.rng.set_state(state["mixture"])
        for k, s in self.samplers.items():
            s.set_state(state[f"batches/{k}"])


def eval_windows(stream: Tensor, seq_len: int) -> Tensor:
    """Non-overlapping windows covering every token of the stream after the first.

    Window i holds tokens [i·L, i·L + L]; the last one is padded with IGNORE targets.
    """
    n_pred = len(stream) - 1
    n_win = -(-n_pred // seq_len)
    out = torch.full((n_win, seq_len + 1), IGNORE, dtype=torch.long)
    for i in range(n_win):
        chunk = stream[i * seq_len: i * seq_len + seq_len + 1]
        out[i, : len(chunk)] = chunk
    return out


@dataclass
class EvalSet:
    """A split as evaluation windows, with every predicted token's document.

    The stream `[eos] d1 [eos] d2 [eos] ...` is cut into non-overlapping windows; a document
    owns its tokens and the `eos` that ends it (so its loss sums to what predicting it costs),
    and `doc_of` holds, for each target position of each window, its document (-1: padding).
    Per-document losses make every comparison pairable: variants are scored on exactly the
    same documents, whatever their tokenizers, and intervals resample documents.
    """

    windows: Tensor         # (n_windows, seq_len + 1) token ids
    doc_of: Tensor          # (n_windows, seq_len) document index of each target, -1 = none
    doc_bytes: list[int]    # UTF-8 bytes of each document

    @property
    def n_bytes(self) -> int:
        return sum(self.doc_bytes)

    @property
    def n_docs(self) -> int:
        return len(self.doc_bytes)


def eval_set(docs: Sequence[Sequence[int]], texts: Sequence[str], seq_len: int,
             eos: int = EOS_ID) -> EvalSet:
    stream = token_stream(docs, eos)
    owner = torch.full((len(stream),), -1, dtype=torch.long)
    pos = 1
    for i, ids in enumerate(docs):
        owner[pos:pos + len(ids) + 1] = i   # the document's tokens and its closing eos
        pos += len(ids) + 1
    windows = eval_windows(stream, seq_len)
    doc_of = torch.full((len(windows), seq_len), -1, dtype=torch.long)
    for i in range(len(windows)):
        chunk = owner[i * seq_len + 1: i * seq_len + seq_len + 1]
        doc_of[i, : len(chunk)] = chunk
    return EvalSet(windows, doc_of, [len(t.encode("utf-8")) for t in texts])
