"""Body-level evaluation: the ceilings by hand, the validation split, the frozen probe, choices
made on validation only, and the minimal-pair scorer against log-likelihoods by hand."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace

import pytest
import torch

from dept_core import baselines
from dept_core import downstream as ds


# ------------------------------------------------------------------------------- ceilings ----
def _nb_by_hand(train, alpha, text):
    """Multinomial naive Bayes over character unigrams of `char_wb` (each word padded with one
    space on both sides), worked out without scikit-learn."""
    def grams(t):
        return Counter(c for w in t.lower().split() for c in f" {w} ")

    labels = sorted({y for _, y in train})
    vocab = sorted({g for t, _ in train for g in grams(t)})
    scores = {}
    for y in labels:
        docs = [t for t, yy in train if yy == y]
        counts = sum((grams(t) for t in docs), Counter())
        total = sum(counts[g] for g in vocab)
        scores[y] = math.log(len(docs) / len(train)) + sum(
            n * math.log((counts[g] + alpha) / (total + alpha * len(vocab)))
            for g, n in grams(text).items() if g in vocab)
    return max(labels, key=lambda y: scores[y])


def test_majority_and_bag_of_words_match_hand_computed_values():
    train = [("aab", "x"), ("ab a", "x"), ("bbc", "y"), ("cb", "y"), ("ca", "y")]
    val = [("aa", "x"), ("cc", "y"), ("b", "y")]
    test = [("abba", "x"), ("c a", "y"), ("bcb", "y"), ("aaa", "x"), ("bab", "x")]
    cols = (lambda rows: ([t for t, _ in rows], [y for _, y in rows]))
    maj = baselines.majority([y for _, y in train], [y for _, y in test])
    assert maj["label"] == "y" and maj["accuracy"] == pytest.approx(2 / 5)
    assert maj["correct"] == [0, 1, 1, 0, 0]

    alphas = (0.01, 1.0, 5.0)
    bow = baselines.bag_of_words(cols(train), cols(val), cols(test), alphas, ngrams=(1, 1))
    by_hand_val = {a: sum(_nb_by_hand(train, a, t) == y for t, y in val) / len(val)
                   for a in alphas}
    assert bow["val_accuracy"] == {str(a): pytest.approx(v) for a, v in by_hand_val.items()}
    best = max(alphas, key=lambda a: (by_hand_val[a], -a))  # ties: the smaller alpha
    assert bow["alpha"] == best
    by_hand = [int(_nb_by_hand(train, best, t) == y) for t, y in test]
    assert bow["correct"] == by_hand
    assert bow["accuracy"] == pytest.approx(sum(by_hand) / len(test))


# ------------------------------------------------------------------------ validation split ----
def test_validation_split_is_grouped_by_package_and_never_touches_test():
    rows = ds.load_task("corpus/downstream/topic.jsonl.gz")
    carved = ds.carve_validation(rows, 0.2, seed=0)
    assert [r.split for r in carved if r.split == "test"] == \
        [r.split for r in rows if r.split == "test"]            # test rows untouched
    assert all(a.text == b.text for a, b in zip(rows, carved))
    val = {r.group for r in carved if r.split == "val"}
    train = {r.group for r in carved if r.split == "train"}
    test = {r.group for r in carved if r.split == "test"}
    assert val and not val & test and not val & train          # whole packages, no test one
    share = sum(r.split == "val" for r in carved) / sum(r.split != "test" for r in rows)
    assert 0.1 < share < 0.3
    assert carved == ds.carve_validation(rows, 0.2, seed=0)     # deterministic
    # translations of one description (same package, other language) stay together
    de = {r.group for r in carved if r.split == "val" and r.lang == "de"}
    assert de <= val and {r.group for r in carved if r.split == "train" and r.lang == "en"} \
        .isdisjoint(de)


def test_a_package_with_test_rows_never_goes_to_validation():
    rows = [ds.Example(f"t{i}", "a", "train", "en", f"p{i}") for i in range(200)]
    rows += [ds.Example("shared", "a", "test", "en", f"p{i}") for i in range(0, 200, 2)]
    carved = ds.carve_validation(rows, 0.5, seed=3)
    val = {r.group for r in carved if r.split == "val"}
    assert val and all(int(g[1:]) % 2 == 1 for g in val)


# ----------------------------------------------------------------------------- the choices ----
def test_a_choice_made_on_validation_cannot_move_when_test_numbers_change():
    val = {(0.001, 100): {"accuracy": 0.5, "loss": 1.0},
           (0.003, 100): {"accuracy": 0.6, "loss": 1.2},
           (0.003, 200): {"accuracy": 0.6, "loss": 1.1}}
    assert ds.choose_point(val) == (0.003, 200)                 # accuracy, then loss
    from dept_core.probe import choose
    assert choose({0.01: 2.3, 0.03: 2.2, 0.1: 2.2}) == 0.03     # ties: the smaller rate


def _tiny_task(seed_labels: int = 0):
    rows = ds.load_task("corpus/downstream/topic.jsonl.gz", ["en", "de"])
    rows = ds.carve_validation(rows[::4], 0.25, 0)
    labels = sorted({r.label for r in rows})
    test = [r for r in rows if r.split == "test"]
    if seed_labels:  # the same test texts with other labels: different test numbers
        g = torch.Generator().manual_seed(seed_labels)
        perm = torch.randperm(len(labels), generator=g).tolist()
        test = [replace(r, label=labels[perm[labels.index(r.label)]]) for r in test]
    return ds.Task(labels, [r for r in rows if r.split == "train"],
                   [r for r in rows if r.split == "val"], test, ["de", "en"])


def test_finetune_grid_choice_ignores_test_labels_and_scores_recompute(tokenized_root,
                                                                          tiny_cfg):
    from dept_core import body_protocols as bp
    from dept_core import continued as cp
    from dept_core import tokenizers as tk
    from dept_core.layout import TOKENIZERS
    from dept_core.model import build_model, get_body

    sp = tk.load(tokenized_root / TOKENIZERS / "global" / "spm.model")
    vocab = sp.get_piece_size()
    lm = cp.model_from(tiny_cfg, get_body(build_model(tiny_cfg.model, vocab, 0)),
                       cp.fresh_bank(tiny_cfg, vocab), torch.device("cpu"))
    dcfg = tiny_cfg.evaluate.downstream.model_copy(
        update={"steps": [10, 20], "lrs": [1e-3, 3e-3], "max_len": 32})
    cfg = tiny_cfg.model_copy(update={"evaluate": tiny_cfg.evaluate.model_copy(
        update={"downstream": dcfg})})
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    runs = [bp.finetuned(cfg, [lm], [sp], bp.single_route(t), t, torch.device("cpu"))
            for t in (_tiny_task(), _tiny_task(seed_labels=7))]
    assert all(torch.equal(before[k], v) for k, v in lm.state_dict().items())  # a copy
    a, b = runs
    assert a["choice"] == b["choice"]                 # the same point, the same val numbers
    # successive halving: both rates at 10 steps, the better one alone on to 20
    assert [(v["lr"], v["steps"]) for v in a["choice"]["val"]][:2] == [(1e-3, 10), (3e-3, 10)]
    assert len(a["choice"]["val"]) == 3
    assert a["correct"] != b["correct"]               # while the test numbers moved
    task = _tiny_task()
    assert a["accuracy"] == pytest.approx(sum(a["correct"]) / len(a["correct"]))
    n_en = sum(r.lang == "en" for r in task.test)
    pooled = (a["accuracy_per_language"]["en"] * n_en
              + a["accuracy_per_language"]["de"] * (len(task.test) - n_en)) / len(task.test)
    assert pooled == pytest.approx(a["accuracy"])


# --------------------------------------------------------------------------- frozen probe ----
def test_frozen_probe_leaves_the_body_bit_identical_and_trains_the_embedding(
        tokenized_root, tiny_cfg):
    from dept_core import continued as cp
    from dept_core import probe
    from dept_core import tokenizers as tk
    from dept_core.layout import PREPARED, TOKENIZERS
    from dept_core.model import build_model, get_bank, get_body

    vocab = tk.load(tokenized_root / TOKENIZERS / "global" / "spm.model").get_piece_size()
    body = get_body(build_model(tiny_cfg.model, vocab, 5))
    frozen = {k: v.clone() for k, v in body.items()}
    cfg = tiny_cfg.model_copy(update={"evaluate": tiny_cfg.evaluate.model_copy(
        update={"probe": tiny_cfg.evaluate.probe.model_copy(
            update={"steps": 6, "lrs": [0.01, 0.03, 0.1], "batch_size": 4})})})
    data = cp.global_data(cfg, tokenized_root / PREPARED, tokenized_root / TOKENIZERS,
                          cfg.data.train_sources)
    model, info = probe.lm_probe(cfg, body, vocab, data, torch.device("cpu"))
    after = get_body(model)
    assert set(after) == set(frozen)
    assert all(torch.equal(after[k], frozen[k]) for k in frozen)   # bit-identical
    assert all(torch.equal(body[k], frozen[k]) for k in frozen)    # the input untouched
    fresh = cp.fresh_bank(cfg, vocab)["tok"]
    assert not torch.equal(get_bank(model)["tok"], fresh)          # the embedding trained
    assert info["lr"] in (0.01, 0.03, 0.1) and set(info["val_bpb"]) == {"0.01", "0.03", "0.1"}
    best = min(info["val_bpb"].items(), key=lambda kv: (kv[1], float(kv[0])))
    assert float(best[0]) == info["lr"]
    assert info["at_grid_edge"] == (info["lr"] in (0.01, 0.1))


def test_label_groups_merge_labels_and_name_a_missing_one(tmp_path):
    from dept_core.errors import DataError

    rows = ds.load_task("corpus/downstream/topic.jsonl.gz", ["en"])
    merged = ds.merge_labels(rows, {"libraries": ["libs", "libdevel"]}, "task")
    assert {r.label for r in merged} == ({r.label for r in rows} - {"libs", "libdevel"}) \
        | {"libraries"}
    assert sum(r.label == "libraries" for r in merged) == \
        sum(r.label in ("libs", "libdevel") for r in rows)
    with pytest.raises(DataError, match="libz not a label of task"):
        ds.merge_labels(rows, {"x": ["libz"]}, "task")
