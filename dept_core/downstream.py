"""Downstream: a body on a real labelled task, three ways, beside the ceilings and the floor.

Paper §5 fine-tunes the pre-trained models on downstream tasks (the camera-ready adds
fine-tuning after continued pre-training). At this scale the task is the embedded topic
classification (Debian package descriptions, written by people, labelled with the package's
archive section, in eight languages). Every body — the untrained one included — goes through
the same protocols (`dept_core.evaluate` runs them):

* **as trained**: the models a user of the variant deploys — each language read by its own
  source's exported model (SPEC/SPEC-OPT: that source's embeddings and tokenizer), a language
  that is not a training source by the global model where one exists; one classifier whose
  body is shared by those models (DEPT's shape: one body, per-source embeddings);
* **after CPT**: the model after continued pre-training with a fresh global embedding (the
  paper's like-for-like row: every body reads the task with the same tokens);
* **frozen probe**: the body frozen with the probe's embedding (`dept_core.probe`), only a
  linear head on mean-pooled features trains (`linear_probe`).

Fine-tuning is chosen on validation (the study's equal-budget rule): the same grid of peak
rates × steps for every body; the validation rows are carved out of the train rows grouped
by package (`carve_validation`), never touching a test package; only the chosen point is
scored on test. The ceilings (majority class, bag of words: `dept_core.baselines`) train on
the same rows.

Interpretation: the classifier trains on the rows of the languages that are training sources
(every body reads them, so every body trains on the same rows); the other languages are a
zero-shot transfer test, scored where a body can read them. Where no task language is a
training source (a multi-domain corpus), every language trains.

Input rows are JSON lines `{"text": str, "label": str, "split": "train"|"test",
"lang": str?, "id": str?, "group": str?}` (`.gz` allowed); `group` (default: the package
part of an `id` "lang:package", else the text) keeps translations of one description on one
side of the validation split.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from dept_core import interrupt
from dept_core.batches import EOS_ID, derived_seed
from dept_core.config import Config
from dept_core.errors import DataError
from dept_core.metrics import accuracy, macro_f1
from dept_core.model import SPECIAL_IDS, lr_at
from dept_core.sources import json_records
from dept_core.trainer import autocast_for, local_train

PAD_ID = SPECIAL_IDS["pad_token_id"]


@dataclass(frozen=True)
class Example:
    text: str
    label: str
    split: str  # train | val | test
    lang: str
    group: str


def _group(row: dict) -> str:
    if isinstance(row.get("group"), str) and row["group"]:
        return row["group"]
    if isinstance(row.get("id"), str) and ":" in row["id"]:
        return row["id"].split(":", 1)[1]
    return hashlib.sha1(row["text"].encode("utf-8")).hexdigest()


def load_task(path: Path, languages: list[str] | None = None) -> list[Example]:
    """Read and check the task file; an unusable row is an error naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: downstream task file not found (evaluate.downstream.path)")
    rows = []
    for i, row in json_records(path):
        if not isinstance(row, dict) or not isinstance(row.get("text"), str) \
                or not isinstance(row.get("label"), str) \
                or row.get("split") not in ("train", "test"):
            raise DataError(f"{path}:{i}: expected {{text: str, label: str, split: train|test}}")
        rows.append(Example(row["text"], row["label"], row["split"], str(row.get("lang", "")),
                            _group(row)))
    if languages is not None:
        rows = [r for r in rows if r.lang in set(languages)]
    for split in ("train", "test"):
        if not any(r.split == split for r in rows):
            raise DataError(f"{path}: no '{split}' rows"
                            + (f" for languages {languages}" if languages else ""))
    return rows


def merge_labels(rows: list[Example], groups: dict[str, list[str]], path: Path
                 ) -> list[Example]:
    """Relabel rows by `evaluate.downstream.label_groups` (new label -> old labels)."""
    present = {r.label for r in rows}
    missing = sorted({old for olds in groups.values() for old in olds} - present)
    if missing:
        raise DataError(f"evaluate.downstream.label_groups: {', '.join(missing)} not a label "
                        f"of {path} (labels: {', '.join(sorted(present))})")
    new = {old: name for name, olds in groups.items() for old in olds}
    return [replace(r, label=new.get(r.label, r.label)) for r in rows]


def carve_validation(rows: list[Example], fraction: float, seed: int) -> list[Example]:
    """Move a seeded `fraction` of the train rows' groups to a `val` split. A group is wholly
    in train or in val, and never a group that has test rows (so validation and test never
    share a package); test rows are untouched."""
    test_groups = {r.group for r in rows if r.split == "test"}

    def to_val(group: str) -> bool:
        return derived_seed(seed, "downstream-val", group) % 10_000 < fraction * 10_000

    return [replace(r, split="val") if r.split == "train" and r.group not in test_groups
            and to_val(r.group) else r for r in rows]


@dataclass
class Task:
    """The task as every protocol sees it (the same rows for every body)."""

    labels: list[str]
    train: list[Example]   # the rows fine-tuning and the ceilings train on
    val: list[Example]     # what every choice is made on
    test: list[Example]    # every test row (zero-shot languages included)
    train_langs: list[str]  # the languages trained on; the headline accuracy is over them

    def label_ids(self, rows: list[Example]) -> torch.Tensor:
        return torch.tensor([self.labels.index(r.label) for r in rows])


def prepare_task(cfg: Config, path: Path) -> Task:
    """Read the task, carve the validation split, keep the training languages' rows for
    training and validation (all rows when no task language is a training source)."""
    dc = cfg.evaluate.downstream
    rows = merge_labels(load_task(path, dc.languages), dc.label_groups, path)
    rows = carve_validation(rows, dc.val_fraction, cfg.seed)
    langs = sorted({r.lang for r in rows})
    train_langs = [lang for lang in langs if lang in set(cfg.data.train_sources)] or langs
    train = [r for r in rows if r.split == "train" and r.lang in train_langs]
    val = [r for r in rows if r.split == "val" and r.lang in train_langs]
    if not train or not val:
        raise DataError(f"{path}: {len(train)} train and {len(val)} validation rows in "
                        f"{train_langs} after carving evaluate.downstream.val_fraction "
                        f"{dc.val_fraction}: too few to fine-tune and choose on")
    return Task(sorted({r.label for r in rows}), train, val,
                [r for r in rows if r.split == "test"], train_langs)


def encode(sp, texts: list[str], max_len: int) -> list[list[int]]:
    """[eos] + pieces (the document-start marker the language model was trained with)."""
    return [[EOS_ID, *ids[: max_len - 1]] for ids in sp.encode(texts)]


def _pad(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), PAD_ID, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
    return ids, (ids != PAD_ID).long()


def share_body(bases: list[torch.nn.Module]) -> None:
    """Make every base model use the first one's body parameters (the same tensors), keeping
    each one's own embeddings: one body, per-source embeddings."""
    first = bases[0]
    shared = {n: p for n, p in first.named_parameters() if id(p) not in _bank_ids(first)}
    for base in bases[1:]:
        for name in list(shared):
            owner, _, attr = name.rpartition(".")
            mod = base.get_submodule(owner) if owner else base
            mod._parameters[attr] = shared[name]


def _bank_ids(base: torch.nn.Module) -> set[int]:
    """A base model's embeddings: tokens, and learned positions where it has them."""
    ids = {id(p) for p in base.get_input_embeddings().parameters()}
    if isinstance(getattr(base, "wpe", None), torch.nn.Embedding):  # GPT-2's positions
        ids.add(id(base.wpe.weight))
    return ids


def _base(lm):
    """The LM without its output layer (HF's `base_model`), as a module of its own."""
    return copy.deepcopy(lm.base_model)


class Classifier(torch.nn.Module):
    """Base model(s) mean-pooled over the real tokens, and one new linear head. With several
    base models (a route per source model) the body is shared and each keeps its embeddings.

    Beyond the paper (it does not fix a head): we pool by the mean, not the last token
    (`AutoModelForSequenceClassification`'s choice for causal LMs). Measured on the demo: with
    last-token pooling a pre-trained body stayed at chance after 150 steps (accuracy 0.13,
    train loss ≈ ln 8) while mean pooling reached 0.32 — the last position of a causal LM is
    specialised for next-token prediction. The pooled vector is normalised (a layer norm
    without parameters) before the head: a pre-trained body's hidden states have a few
    large dimensions, and the head learned faster on normalised ones (demo bodies after CPT,
    300 steps: STD 0.32 → 0.34, TRIM 0.29 → 0.33 accuracy); every body gets the same head.
    """

    def __init__(self, lms: list, n_labels: int, seed: int):
        super().__init__()
        self.bases = torch.nn.ModuleList([_base(lm) for lm in lms])
        share_body(list(self.bases))
        cfg = lms[0].config
        d = cfg.hidden_size if hasattr(cfg, "hidden_size") else cfg.n_embd
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derived_seed(seed, "downstream-head"))
            self.head = torch.nn.Linear(d, n_labels)

    def pooled(self, route: int, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.bases[route](input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp_min(1)

    def forward(self, route: int, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.pooled(route, ids, mask)
        return self.head(torch.nn.functional.layer_norm(x, x.shape[-1:]))


@dataclass
class Encoded:
    """Examples as one body reads them: each example's route (base model) and token ids."""

    routes: list[int]
    seqs: list[list[int]]


def run_routed(fn, enc: Encoded, idx: list[int], device) -> torch.Tensor:
    """`fn(route, ids, mask)` over the examples `idx`, grouped by route, in `idx`'s order."""
    out: list[torch.Tensor | None] = [None] * len(idx)
    for route in sorted({enc.routes[i] for i in idx}):
        pos = [j for j, i in enumerate(idx) if enc.routes[i] == route]
        ids, mask = _pad([enc.seqs[idx[j]] for j in pos])
        with autocast_for(device):
            res = fn(route, ids.to(device), mask.to(device)).float()
        for j, row in zip(pos, res):
            out[j] = row
    return torch.stack(out)  # type: ignore[arg-type]


class IndexBatches:
    """Random batches of training-example indices, each from one language (drawn with
    probability ∝ its rows), so that a routed classifier runs one base model per step; a
    seeded generator: the same batches for every body and every grid point."""

    def __init__(self, langs: list[str], batch_size: int, seed: int):
        self.groups = [torch.tensor([i for i, x in enumerate(langs) if x == lang])
                       for lang in sorted(set(langs))]
        self.weights = torch.tensor([len(g) for g in self.groups], dtype=torch.float64)
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(derived_seed(seed, "downstream-batches"))

    def next(self) -> torch.Tensor:
        g = self.groups[int(torch.multinomial(self.weights, 1, generator=self.generator))]
        return g[torch.randint(0, len(g), (self.batch_size,), generator=self.generator)]


@torch.no_grad()
def predict(clf: Classifier, enc: Encoded, labels: torch.Tensor | None, device,
            batch: int = 64) -> tuple[list[int], float | None]:
    """Predicted label ids, and the mean cross-entropy when `labels` are given."""
    was = clf.training
    clf.eval()
    preds, loss = [], 0.0
    for i in range(0, len(enc.seqs), batch):
        interrupt.check()
        idx = list(range(i, min(i + batch, len(enc.seqs))))
        logits = run_routed(clf, enc, idx, device)
        preds.extend(logits.argmax(-1).tolist())
        if labels is not None:
            loss += float(torch.nn.functional.cross_entropy(
                logits, labels[idx].to(logits.device), reduction="sum"))
    clf.train(was)
    return preds, (loss / len(enc.seqs) if labels is not None else None)


def choose_point(val: dict[tuple[float, int], dict]) -> tuple[float, int]:
    """The grid point with the highest validation accuracy (ties: the lower validation loss,
    then the smaller rate and fewer steps). Only validation numbers enter: nothing measured
    on test can move the choice."""
    return min(val, key=lambda k: (-val[k]["accuracy"], val[k]["loss"], k))


class _Run:
    """One rate's fine-tuning, advanced checkpoint by checkpoint (successive halving)."""

    def __init__(self, cfg: Config, make: callable, lr: float, task: Task, train: Encoded,
                 device):
        dc, t = cfg.evaluate.downstream, cfg.train
        self.lr, self.done, self.total = lr, 0, max(dc.steps)
        self.clf = make().to(device).train()
        # foreach: one multi-tensor update (on the CPU 40 % faster than per tensor)
        self.opt = torch.optim.AdamW([p for p in self.clf.parameters() if p.requires_grad],
                                     lr=lr, weight_decay=t.weight_decay, betas=tuple(t.betas),
                                     foreach=True)
        self.batches = IndexBatches([r.lang for r in task.train], dc.batch_size, t.seed)
        self.y = task.label_ids(task.train)
        self.train, self.device, self.t = train, device, t

    def loss(self, model, idx):
        idx = idx.tolist()
        logits = run_routed(model, self.train, idx, self.device)
        # (mean x rows, rows): micro-batches of any size then weigh as in one pass; with a
        # power-of-two batch the product and local_train's division are exact
        loss = torch.nn.functional.cross_entropy(logits, self.y[idx].to(self.device))
        return loss * len(idx), len(idx)

    def advance(self, to: int) -> None:
        t, warmup = self.t, max(1, self.total // 10)
        local_train(self.clf, self.opt, self.batches, to - self.done, self.done,
                    lambda i: lr_at(i, self.total, self.lr, warmup, t.min_lr_ratio),
                    t.grad_clip, torch.device("cpu"), self.loss, t.micro_batch_size)
        self.done = to


def finetune_grid(cfg: Config, make: callable, task: Task, train: Encoded, val: Encoded,
                  device) -> tuple[Classifier, dict]:
    """Fine-tune a classifier (`make()`) at every peak rate of `evaluate.downstream.lrs` and
    score validation at every step count of `evaluate.downstream.steps` (checkpoints of one
    run per rate: warm-up over 10 % of the longest, then cosine decay over it), by successive
    halving (Jamieson & Talwalkar 2016): after each checkpoint but the last, only the better
    half of the rates (by validation) trains on. The same rule for every body; the point
    chosen is the best validated one. Returns the classifier at that point and the grid's
    validation numbers."""
    dc = cfg.evaluate.downstream
    y_val = task.label_ids(task.val)
    runs = [_Run(cfg, make, lr, task, train, device) for lr in dc.lrs]
    scores, best_state = {}, None
    for i, s in enumerate(sorted(dc.steps)):
        for run in runs:
            run.advance(s)
            pred, loss = predict(run.clf, val, y_val, device)
            scores[(run.lr, s)] = {"accuracy": accuracy(pred, y_val.tolist()), "loss": loss}
            if choose_point(scores) == (run.lr, s):
                best_state = copy.deepcopy(run.clf.state_dict())
        if i < len(dc.steps) - 1:  # the better half trains on
            runs = sorted(runs, key=lambda r: (-scores[(r.lr, s)]["accuracy"],
                                               scores[(r.lr, s)]["loss"], r.lr)
                          )[: -(-len(runs) // 2)]
    chosen = choose_point(scores)
    clf = make().to(device)
    clf.load_state_dict(best_state)
    return clf, {"lr": chosen[0], "steps": chosen[1],
                 "val": [{"lr": k[0], "steps": k[1], **v} for k, v in scores.items()],
                 "at_grid_edge": _at_edge(chosen, dc.lrs, dc.steps)}


def _at_edge(chosen: tuple[float, int], lrs: list[float], steps: list[int]) -> bool:
    """The chosen rate at an end of a grid of several rates (the optimum may lie outside)."""
    return len(lrs) > 1 and chosen[0] in (min(lrs), max(lrs))


def scored(task: Task, pred: dict[int, int]) -> dict:
    """Accuracy over the training languages' test rows (the headline: every body reads them),
    macro-F1 there, accuracy per language, and per test row 1/0 (None: a row this body
    cannot read) for paired intervals."""
    correct = [None if i not in pred else int(task.labels[pred[i]] == r.label)
               for i, r in enumerate(task.test)]
    head = [i for i, r in enumerate(task.test) if r.lang in task.train_langs and i in pred]
    per_lang = {}
    for lang in sorted({r.lang for r in task.test}):
        got = [correct[i] for i, r in enumerate(task.test) if r.lang == lang
               and correct[i] is not None]
        if got:
            per_lang[lang] = sum(got) / len(got)
    gold = [task.test[i].label for i in head]
    pred_labels = [task.labels[pred[i]] for i in head]
    return {"accuracy": accuracy(pred_labels, gold) if head else None,
            "macro_f1": macro_f1(pred_labels, gold) if head else None,
            "accuracy_per_language": per_lang, "correct": correct}


def test_predictions(clf: Classifier, test: Encoded, readable: list[int], device
                     ) -> dict[int, int]:
    pred, _ = predict(clf, test, None, device)
    return dict(zip(readable, pred))
