"""Gradient accumulation (`train.micro_batch_size`): K micro-batches per optimiser step give the
weights one pass over the whole batch gives, within fp32 tolerance — in the inner loop itself
(language-model loss with padding, so the micro-batches count different numbers of tokens; a
classification loss on a tuple batch), and through DEPT and STD pre-training, CPT and the
downstream fine-tuning on the tiny real-text project."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from dept_core.config_io import validate
from dept_core.layout import PREPARED, TOKENIZERS
from dept_core.model import build_model
from dept_core.run import run_key, train_variant
from dept_core.trainer import local_train, split_batch
from tests.conftest import REPO

STEPS = 4


class _Fixed:
    """The same sequence of batches for every run (so both runs see identical data)."""

    def __init__(self, batches):
        self.batches, self.i = batches, 0

    def next(self):
        self.i += 1
        return self.batches[(self.i - 1) % len(self.batches)]


def _text_ids(n_rows: int, width: int, vocab: int) -> torch.Tensor:
    """Rows of real text (the embedded corpus's bytes) as token ids below `vocab`."""
    import gzip

    with gzip.open(REPO / "corpus/multilingual/en.jsonl.gz", "rt", encoding="utf-8") as f:
        blob = "\n".join(json.loads(line)["text"] for line in f).encode("utf-8")
    ids = torch.tensor(list(blob[: n_rows * width]), dtype=torch.long) % vocab
    return ids.view(n_rows, width)


def _train(tiny_cfg, batches, micro, loss_fn=None, model=None):
    torch.manual_seed(0)
    model = model or build_model(tiny_cfg.model, 97, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    kw = {"loss_fn": loss_fn} if loss_fn else {}
    stats = local_train(model, opt, _Fixed(batches), STEPS, 0, lambda s: 3e-3, 1.0,
                        torch.device("cpu"), micro_batch=micro, **kw)
    return model, stats


def _close(a: torch.nn.Module, b: torch.nn.Module, tol: float = 2e-5) -> None:
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.allclose(x, y, rtol=tol, atol=tol), (name, (x - y).abs().max().item())


def test_split_batch_keeps_every_row_in_order():
    x = torch.arange(14).view(7, 2)
    parts = split_batch(x, 3)
    assert [p.shape[0] for p in parts] == [3, 3, 1] and torch.equal(torch.cat(parts), x)
    pairs = split_batch((x, torch.arange(7)), 4)
    assert [tuple(t.shape[0] for t in p) for p in pairs] == [(4, 4), (3, 3)]
    assert split_batch(x, None) == [x] and split_batch(x, 7) == [x]


@pytest.mark.parametrize("micro", [1, 3, 4])
def test_micro_batches_give_the_weights_of_one_big_batch(tiny_cfg, micro):
    """8 rows of real text, the last rows padded (-100 targets): micro-batches hold different
    token counts, and the step must still be the whole batch's mean — not a mean of means."""
    rows = _text_ids(8 * STEPS, 33, 97).view(STEPS, 8, 33).clone()
    rows[:, 5:, 20:] = -100
    batches = list(rows)
    whole, s1 = _train(tiny_cfg, batches, None)
    split, s2 = _train(tiny_cfg, batches, micro)
    _close(whole, split)
    assert s1.tokens == s2.tokens
    assert s1.step_losses == pytest.approx(s2.step_losses, rel=1e-5)


def test_a_mean_of_micro_batch_means_would_differ(tiny_cfg):
    """The check above can fail: weighting each micro-batch equally (the classic mistake
    when the last micro-batch has fewer tokens) moves the weights beyond the tolerance."""
    from dept_core.model import lm_loss

    rows = _text_ids(8 * STEPS, 33, 97).view(STEPS, 8, 33).clone()
    rows[:, 5:, 20:] = -100

    def mean_loss(model, batch):  # each micro-batch's mean, counted as one unit
        loss, n = lm_loss(model, batch)
        return loss / n, 1

    whole, _ = _train(tiny_cfg, list(rows), None)
    wrong, _ = _train(tiny_cfg, list(rows), 3, loss_fn=mean_loss)
    with pytest.raises(AssertionError):
        _close(whole, wrong)


def test_a_tuple_batch_with_a_classification_loss(tiny_cfg):
    head = torch.nn.Sequential(torch.nn.Embedding(97, 16), torch.nn.Flatten(),
                               torch.nn.Linear(16 * 12, 5))
    x = _text_ids(12 * STEPS, 12, 97).view(STEPS, 12, 12)
    y = (x[:, :, 0] % 5)
    batches = [(x[i], y[i]) for i in range(STEPS)]

    def loss(model, batch):
        inputs, labels = batch
        return torch.nn.functional.cross_entropy(model(inputs), labels, reduction="sum"), \
            len(labels)

    whole, _ = _train(tiny_cfg, batches, None, loss, copy.deepcopy(head))
    split, _ = _train(tiny_cfg, batches, 5, loss, copy.deepcopy(head))
    _close(whole, split)


@pytest.mark.parametrize("variant", ["trim", "std"])
def test_pretraining_with_micro_batches_ends_with_the_same_body(tokenized_root, tiny_raw,
                                                                variant):
    raw = json.loads(json.dumps(tiny_raw))
    raw["train"].update(rounds=2, local_steps=3, batch_size=8, sources_per_round=2)
    runs = {}
    for micro in (None, 2):
        raw["train"]["micro_batch_size"] = micro
        cfg = validate(raw)
        runs[micro], _ = train_variant(cfg, variant, tokenized_root / PREPARED,
                                       tokenized_root / TOKENIZERS, None)
    for name, t in runs[None].body.items():
        assert torch.allclose(t, runs[2].body[name], rtol=1e-4, atol=1e-5), name


def test_the_setting_left_unset_keeps_earlier_run_keys(tokenized_root, tiny_raw):
    """Checkpoints of runs from before the setting existed stay valid; setting it is a new
    run (accumulation changes the last bits)."""
    raw = json.loads(json.dumps(tiny_raw))
    key = run_key(validate(raw), "glob", tokenized_root / PREPARED, tokenized_root / TOKENIZERS)
    cfg = validate(raw)
    dump = cfg.model_dump_json(exclude={"train": {"variants", "seeds", "micro_batch_size"},
                                        "evaluate": True})
    assert "micro_batch_size" not in dump
    raw["train"]["micro_batch_size"] = 2
    assert run_key(validate(raw), "glob", tokenized_root / PREPARED,
                   tokenized_root / TOKENIZERS) != key


def test_a_bad_micro_batch_size_is_refused_naming_the_key(tiny_raw):
    from dept_core.errors import ConfigError

    raw = json.loads(json.dumps(tiny_raw))
    raw["train"]["micro_batch_size"] = 0
    with pytest.raises(ConfigError, match="train.micro_batch_size"):
        validate(raw)
