"""Zero-shot minimal pairs: does a model prefer real text to the same words reordered?

BLiMP's form (Warstadt et al. 2020), built from the test split of every source — documents
that no tokenizer and no model trained on: an item is a short context and the next few
words of a document; its wrong choices are the same words in other orders. The model scores
each whole string by its log-likelihood and is right when the real text scores highest.
Nothing is fine-tuned, so the score is what the pre-trained model (body and embeddings)
holds about word order.

How it relates to the paper: the paper's downstream evaluation fine-tunes (§5); this probe
goes beyond it, as a zero-shot check that needs no labelled data and works in every
language of the corpus. (The alternative form, wrong continuations taken from other
documents, measured at chance for every model at this size — topical coherence over a few
sentences is not learned at d=96 — so it is not offered.)

Length control: in scripts without spaces (ja, zh) the units are 2-character chunks, and
reordering them changes how a tokenizer segments the text — an untrained model then wins by
token count alone. An item is kept only when every choice has exactly the token count of the
real text under **every** tokenizer that reads that source in any variant (global,
sub-vocabulary, SPEC-OPT's own), so every model is scored on the same items and no choice is
shorter. The untrained body on the same items is the floor, chance (1 / choices) beside it.

The scorer is our own (the models need our per-source SentencePiece tokenizers with the
document-start marker they were trained with); tests/test_minimal_pairs.py checks it against
log-likelihoods computed token by token.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from dept_core import interrupt
from dept_core import tokenizers as tk
from dept_core.batches import EOS_ID, IGNORE, derived_seed
from dept_core.model import token_nll
from dept_core.sourcedata import LAYOUT_DIRS
from dept_core.trainer import autocast_for

CHUNK = 2  # characters per unit in scripts without spaces


@dataclass(frozen=True)
class Item:
    source: str
    doc: int                   # index of the document in the source's test split
    choices: tuple[str, ...]   # choices[0] is the real text


_NO_SPACES = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def units_of(text: str) -> tuple[list[str], str]:
    """Words (joined by a space), or 2-character chunks (joined by nothing, spaces dropped)
    where a third or more of the characters are of a script written without spaces (CJK)."""
    flat = "".join(text.split())
    if flat and len(_NO_SPACES.findall(flat)) >= len(flat) / 3:
        return [flat[i:i + CHUNK] for i in range(0, len(flat) - CHUNK + 1, CHUNK)], ""
    return text.split(), " "


def readers(tok_root: Path, source: str) -> list:
    """Every tokenizer that reads `source` in some variant (the token-count control)."""
    out = [tk.load(Path(tok_root) / LAYOUT_DIRS["global"] / "spm.model")]
    for layout in ("subvocab", "own"):
        path = Path(tok_root) / LAYOUT_DIRS[layout] / source / "spm.model"
        if path.is_file():
            out.append(tk.load(path))
    return out


def _counts(sps: list, text: str) -> tuple[int, ...]:
    return tuple(len(sp.encode(text)) for sp in sps)


def build_items(texts: list[str], source: str, sps: list, n_items: int, context: int,
                length: int, choices: int, max_tokens: int, seed: int,
                tries: int = 40) -> list[Item]:
    """Up to `n_items` items from `texts`: windows of `context` units then the real next
    `length` units (non-overlapping within a document, taken in a seeded order), against
    `choices - 1` distinct reorderings with the same token counts under every tokenizer in
    `sps`."""
    rng = random.Random(derived_seed(seed, "minimal-pairs", source))
    split = [units_of(t) for t in texts]
    windows = [(d, start) for d, (units, _) in enumerate(split)
               for start in range(context, len(units) - length + 1, context + length)]
    rng.shuffle(windows)
    items = []
    for d, start in windows:
        if len(items) >= n_items:
            break
        units, sep = split[d]
        head, cont = sep.join(units[start - context:start]), units[start:start + length]
        real = head + sep + sep.join(cont)
        want = _counts(sps, real)
        if max(want) + 1 > max_tokens:
            continue
        found: list[str] = []
        for _ in range(tries):
            perm = rng.sample(cont, len(cont))
            text = head + sep + sep.join(perm)
            if text != real and text not in found and _counts(sps, text) == want:
                found.append(text)
                if len(found) == choices - 1:
                    items.append(Item(source, d, (real, *found)))
                    break
    return sorted(items, key=lambda it: (it.doc, it.choices[0]))


@torch.no_grad()
def log_likelihoods(model, sp, texts: list[str], device, batch: int = 32) -> list[float]:
    """Σ_i log p(t_i | t_<i) of each text's tokens after the document-start marker."""
    seqs = [[EOS_ID, *ids] for ids in sp.encode(texts)]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = [0.0] * len(seqs)
    was = model.training
    model.eval()
    for i in range(0, len(order), batch):
        interrupt.check()
        idx = order[i:i + batch]
        width = max(len(seqs[j]) for j in idx)
        ids = torch.full((len(idx), width), IGNORE, dtype=torch.long)
        for r, j in enumerate(idx):
            ids[r, :len(seqs[j])] = torch.tensor(seqs[j])
        with autocast_for(device):
            nll = token_nll(model, ids.to(device)).double().sum(1).cpu()
        for r, j in enumerate(idx):
            out[j] = -float(nll[r])
    model.train(was)
    return out


def score(model, sp, items: list[Item], device) -> list[int]:
    """1 where the real text has the highest log-likelihood of its item's choices, else 0."""
    if not items:
        return []
    k = len(items[0].choices)
    ll = log_likelihoods(model, sp, [c for it in items for c in it.choices], device)
    return [int(ll[i * k] > max(ll[i * k + 1:(i + 1) * k])) for i in range(len(items))]


def summary(correct: dict[str, list[int] | None], n_choices: int) -> dict:
    """Accuracy per source and over every item this model could read."""
    got = [c for cs in correct.values() if cs for c in cs]
    return {"accuracy": sum(got) / len(got) if got else None, "chance": 1 / n_choices,
            "accuracy_per_source": {s: sum(c) / len(c) for s, c in correct.items() if c},
            "correct": correct}
