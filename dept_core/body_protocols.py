"""The body-level protocols of one body, beyond the LM tables: downstream (as trained, after
CPT, frozen probe, and the ceilings; see `dept_core.downstream` for the task and the
fine-tuning machinery) and zero-shot minimal pairs (`dept_core.minimal_pairs`)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from dept_core import baselines
from dept_core import minimal_pairs as mp
from dept_core import tokenizers as tk
from dept_core.config import Config
from dept_core.data import read_split
from dept_core.downstream import (Classifier, Encoded, Task, encode, finetune_grid, predict,
                                  run_routed, scored)


def ceilings(task: Task) -> dict:
    """Majority class and bag of words on the same train/val/test rows as the bodies."""
    def cols(rows):
        return [r.text for r in rows], [r.label for r in rows]

    maj = baselines.majority([r.label for r in task.train], [r.label for r in task.test])
    bow = baselines.bag_of_words(cols(task.train), cols(task.val), cols(task.test))
    out = {}
    for name, res in (("majority", maj), ("bag_of_words", bow)):
        out[name] = {**{k: v for k, v in res.items() if k != "correct"},
                     **_rescored(task, res["correct"])}
    return out


def _rescored(task: Task, correct: list[int]) -> dict:
    """Headline figures of a baseline's per-row correctness (the same rule as the bodies')."""
    head = [i for i, r in enumerate(task.test) if r.lang in task.train_langs]
    per_lang = {}
    for lang in sorted({r.lang for r in task.test}):
        got = [correct[i] for i, r in enumerate(task.test) if r.lang == lang]
        per_lang[lang] = sum(got) / len(got)
    return {"accuracy": sum(correct[i] for i in head) / len(head),
            "accuracy_per_language": per_lang, "correct": list(correct)}


def task_info(task: Task) -> dict:
    return {"labels": task.labels, "train_langs": task.train_langs,
            "n_train": len(task.train), "n_val": len(task.val), "n_test": len(task.test),
            "test_langs": [r.lang for r in task.test]}


# ------------------------------------------------------------------------ one reader --------
def _encoded(rows, route_of: dict[str, int], sps: list, max_len: int
             ) -> tuple[Encoded, list[int]]:
    """The rows a body can read (its route per language), and their indices in `rows`."""
    keep = [i for i, r in enumerate(rows) if r.lang in route_of]
    routes = [route_of[rows[i].lang] for i in keep]
    seqs: list[list[int]] = [[] for _ in keep]
    for route, sp in enumerate(sps):
        pos = [j for j, rt in enumerate(routes) if rt == route]
        for j, ids in zip(pos, encode(sp, [rows[keep[j]].text for j in pos], max_len)):
            seqs[j] = ids
    return Encoded(routes, seqs), keep


def finetuned(cfg: Config, lms: list, sps: list, route_of: dict[str, int], task: Task,
              device) -> dict:
    """Fine-tune one classifier over the routes (shared body), chosen on validation."""
    dc = cfg.evaluate.downstream
    train, keep_train = _encoded(task.train, route_of, sps, dc.max_len)
    val, keep_val = _encoded(task.val, route_of, sps, dc.max_len)
    sub = Task(task.labels, [task.train[i] for i in keep_train],
               [task.val[i] for i in keep_val], task.test, task.train_langs)
    clf, choice = finetune_grid(cfg, lambda: Classifier(lms, len(task.labels), cfg.train.seed),
                                sub, train, val, device)
    test, keep_test = _encoded(task.test, route_of, sps, dc.max_len)
    pred, _ = predict(clf, test, None, device)
    return {**scored(task, dict(zip(keep_test, pred))), "choice": choice,
            "n_train": len(train.seqs), "routes": len(lms)}


def single_route(task: Task) -> dict[str, int]:
    return {lang: 0 for lang in {r.lang for r in task.train + task.val + task.test}}


def _digest(model_dir: Path) -> str:
    h = hashlib.sha256()
    for name in ("model.safetensors", "spm.model"):
        h.update((Path(model_dir) / name).read_bytes())
    return h.hexdigest()


def as_trained_routes(models_dir: Path, train_sources: list[str], task: Task
                      ) -> tuple[list[Path], dict[str, int]]:
    """Which exported model reads each task language: its training source's model, else the
    global model where one exists (identical directories, GLOB's and STD's, are one route)."""
    models_dir = Path(models_dir)
    dirs, route_of, by_digest = [], {}, {}
    for lang in sorted({r.lang for r in task.train + task.val + task.test}):
        own = models_dir / lang
        path = own if lang in train_sources and own.is_dir() else models_dir / "global"
        if not path.is_dir():
            continue  # SPEC/SPEC-OPT have no model for a language that is not a source
        key = _digest(path)
        if key not in by_digest:
            by_digest[key] = len(dirs)
            dirs.append(path)
        route_of[lang] = by_digest[key]
    return dirs, route_of


def load_routes(dirs: list[Path]) -> tuple[list, list]:
    from dept_core.evaluate import load_lm

    return [load_lm(d) for d in dirs], [tk.load(Path(d) / "spm.model") for d in dirs]


# --------------------------------------------------------------------- frozen linear head ----
@torch.no_grad()
def features(lm, sp, rows, max_len: int, device) -> np.ndarray:
    """Mean-pooled final hidden states of the frozen model (no head, nothing trains)."""
    clf = Classifier([lm], 1, 0).to(device)
    enc = Encoded([0] * len(rows), encode(sp, [r.text for r in rows], max_len))
    out = []
    clf.eval()
    for i in range(0, len(rows), 64):
        out.append(run_routed(clf.pooled, enc, list(range(i, min(i + 64, len(rows)))),
                              device).cpu().double().numpy())
    return np.concatenate(out)


def linear_probe(cfg: Config, lm, sp, task: Task, device) -> dict:
    """A multinomial logistic-regression head (scikit-learn, lbfgs: deterministic) on the
    standardised features of the frozen body; its L2 strength chosen on validation."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    dc = cfg.evaluate.downstream
    x = {name: features(lm, sp, rows, dc.max_len, device)
         for name, rows in (("train", task.train), ("val", task.val), ("test", task.test))}
    scale = StandardScaler().fit(x["train"])
    x = {k: scale.transform(v) for k, v in x.items()}
    y = {name: [r.label for r in rows]
         for name, rows in (("train", task.train), ("val", task.val))}
    val, models = {}, {}
    with threadpool_limits(1):  # BLAS threads next to torch's spinning ones: 20× slower
        for c in dc.probe_cs:
            models[c] = LogisticRegression(C=c, max_iter=2000).fit(x["train"], y["train"])
            val[c] = float(np.mean(models[c].predict(x["val"]) == np.asarray(y["val"])))
    best = min(dc.probe_cs, key=lambda c: (-val[c], c))
    pred = [task.labels.index(p) for p in models[best].predict(x["test"])]
    cs = sorted(dc.probe_cs)
    return {**scored(task, dict(enumerate(pred))),
            "choice": {"C": best, "val": [{"C": c, "accuracy": val[c]} for c in dc.probe_cs],
                       "at_grid_edge": len(cs) > 1 and best in (cs[0], cs[-1])}}


# ------------------------------------------------------------------------------ protocols ----
def downstream(cfg: Config, task: Task, untrained, models_dir: Path, models: dict, gsp,
               device, with_ceilings: bool = True) -> dict:
    """Every downstream row of one body. `untrained` (the reference only) is the untrained
    model with the fresh global embedding, its "as trained"; otherwise the variant's exported
    models are. `models`: after_cpt / probe models over the global tokenizer."""
    out = {"task": task_info(task)}
    if with_ceilings:  # the same for every body: the reference's evaluation computes them
        out["ceilings"] = ceilings(task)
    if untrained is not None:
        out["as_trained"] = finetuned(cfg, [untrained], [gsp], single_route(task), task, device)
    else:
        dirs, route_of = as_trained_routes(models_dir, cfg.data.train_sources, task)
        if any(r.lang in route_of for r in task.train) and \
                any(r.lang in route_of for r in task.val):
            lms, sps = load_routes(dirs)
            out["as_trained"] = finetuned(cfg, lms, sps, route_of, task, device)
        else:  # SPEC/SPEC-OPT on a task in no training source's language: nothing reads it
            out["skipped"] = {"as_trained": "no exported model of this variant reads the "
                                            "task's training languages"}
    if "after_cpt" in models:
        out["after_cpt"] = finetuned(cfg, [models["after_cpt"]], [gsp], single_route(task),
                                     task, device)
    if "probe" in models:
        out["frozen_probe"] = linear_probe(cfg, models["probe"], gsp, task, device)
    return out


def zero_shot(cfg: Config, prepared: Path, tok_root: Path, untrained, models_dir: Path,
              models: dict, gsp, device) -> dict:
    """Minimal pairs on every source's test split, scored by the models that
    `evaluate.minimal_pairs.protocols` names: as trained (each source read by its own model,
    a held-out source by the global model where one exists; the reference: the untrained
    model) and the global-tokenizer models of the other protocols (after CPT, probe)."""
    mc = cfg.evaluate.minimal_pairs
    sources = cfg.data.train_sources + cfg.data.heldout_sources
    items = {s: mp.build_items(read_split(prepared, s, "test"), s, mp.readers(tok_root, s),
                               mc.items_per_source, mc.context, mc.length, mc.choices,
                               cfg.train.seq_len, cfg.seed) for s in sources}
    out = {"items": {s: len(v) for s, v in items.items()}, "choices": mc.choices}
    if "as_trained" in mc.protocols:
        correct = {}
        for s in sources:
            if untrained is not None:
                correct[s] = mp.score(untrained, gsp, items[s], device)
                continue
            path = Path(models_dir) / s
            if s not in cfg.data.train_sources or not path.is_dir():
                path = Path(models_dir) / "global"
            if not path.is_dir():
                correct[s] = None  # SPEC/SPEC-OPT: no model reads a held-out source
                continue
            (lm,), (sp,) = load_routes([path])
            correct[s] = mp.score(lm, sp, items[s], device)
        out["as_trained"] = mp.summary(correct, mc.choices)
    for name, model in models.items():
        if name in mc.protocols:
            out[name] = mp.summary({s: mp.score(model, gsp, items[s], device)
                                    for s in sources}, mc.choices)
    return out
