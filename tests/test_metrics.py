"""Every evaluation metric against values worked out by hand."""

import gzip
import json
import math

import numpy as np
import pytest
import torch

from dept_core import metrics
from dept_core.errors import DataError


def test_perplexity_and_bits_per_byte_by_hand():
    # 3 tokens, each with loss ln 4 nats: perplexity 4; 3·ln4 nats = 6 bits over 4 bytes = 1.5
    assert metrics.perplexity(3 * math.log(4), 3) == pytest.approx(4.0)
    assert metrics.bits_per_byte(3 * math.log(4), 4) == pytest.approx(1.5)
    assert metrics.bits_per_byte(8 * math.log(2), 4) == pytest.approx(2.0)
    assert metrics.perplexity(1e9, 1) == pytest.approx(math.exp(50))  # capped, printable


def test_improvement_accuracy_macro_f1_auc_by_hand():
    assert metrics.improvement_pct(2.0, 1.5) == pytest.approx(25.0)
    assert metrics.improvement_pct(2.0, 2.5) == pytest.approx(-25.0)
    pred, gold = ["a", "b", "a", "c"], ["a", "b", "b", "c"]
    assert metrics.accuracy(pred, gold) == 0.75
    # a: tp 1, fp 1, fn 0 -> 2/3; b: tp 1, fp 0, fn 1 -> 2/3; c: 1 -> mean 7/9
    assert metrics.macro_f1(pred, gold) == pytest.approx(7 / 9)
    # a class predicted but never gold counts (F1 0), as scikit-learn's macro average
    assert metrics.macro_f1(["a", "z"], ["a", "a"]) == pytest.approx((2 / 3 + 0) / 2)
    with pytest.raises(ValueError):
        metrics.accuracy(["a"], ["a", "b"])
    # trapezoids: (10·(4+2)/2 + 10·(2+2)/2) / 20 = 2.5
    assert metrics.area_under_curve([0, 10, 20], [4, 2, 2]) == pytest.approx(2.5)
    assert metrics.mean([1.0, None, 3.0]) == 2.0 and metrics.mean([]) is None


def test_unigram_ce_by_hand():
    from dept_core.tokenizers import unigram_ce

    # add-one on counts [3, 1]: p = [4/6, 2/6]; eval tokens 0, 1
    expected = -(math.log(4 / 6) + math.log(2 / 6)) / 2
    assert unigram_ce(np.array([3, 1]), [[0], [1]]) == pytest.approx(expected)


class Uniform(torch.nn.Module):
    """Logits all zero: every next token costs exactly ln V nats."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab, self.w = vocab, torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids):
        return type("Out", (), {"logits": torch.zeros(*input_ids.shape, self.vocab)
                                + 0 * self.w})()


def test_evaluate_set_by_hand():
    from dept_core.batches import eval_set
    from dept_core.trainer import evaluate_set

    # two documents of 4 and 5 tokens: the stream [eos] d1 [eos] d2 [eos] predicts 5 + 6
    # tokens (each document's own and the eos closing it), in windows of 4 that straddle them
    docs = [[5, 6, 7, 4], [3, 4, 5, 6, 7]]
    ev = eval_set(docs, ["abcdefgh", "ijklmnopqrstuvwx"], seq_len=4)  # 8 and 16 bytes
    assert ev.doc_of.tolist() == [[0, 0, 0, 0], [0, 1, 1, 1], [1, 1, 1, -1]]
    out = evaluate_set(Uniform(8), ev, device=torch.device("cpu"), per_doc=True)
    assert out["tokens"] == 11 and out["bytes"] == 24
    assert out["loss"] == pytest.approx(math.log(8))
    assert out["ppl"] == pytest.approx(8.0)
    assert out["bpb"] == pytest.approx(11 * 3 / 24)  # 11 tokens × 3 bits / 24 bytes
    assert out["docs"]["tokens"] == [5, 6] and out["docs"]["bytes"] == [8, 16]
    assert out["docs"]["loss"] == pytest.approx([5 * math.log(8), 6 * math.log(8)])


def test_downstream_task_file_errors_name_file_and_line(tmp_path):
    from dept_core.downstream import load_task

    path = tmp_path / "task.jsonl.gz"
    good = {"text": "x", "label": "a", "split": "train"}
    with gzip.open(path, "wt") as fh:
        fh.write(json.dumps(good) + "\n" + json.dumps({"text": "y", "label": 3}) + "\n")
    with pytest.raises(DataError, match=r"task.jsonl.gz:2: expected"):
        load_task(path)
    path.write_bytes(b"not gzip")
    with pytest.raises(DataError, match="cannot read .*task.jsonl.gz"):
        load_task(path)
    plain = tmp_path / "task.jsonl"
    plain.write_text(json.dumps(good) + "\n")
    with pytest.raises(DataError, match="no 'test' rows"):
        load_task(plain)
    with pytest.raises(DataError, match="not found"):
        load_task(tmp_path / "missing.jsonl")
