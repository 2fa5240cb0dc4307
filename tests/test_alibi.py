"""ALiBi positions (`model.family: mpt`, transformers' MPT: the paper's models) through every
variant, the communication ledger against Table 1 (no positional rows: L = 0), the export and
its reload, the bank swap and the downstream body."""

from __future__ import annotations

import json

import pytest
import torch

from dept_core.config_io import validate
from dept_core.layout import PREPARED, TOKENIZERS
from dept_core.run import export_all, train_variant
from dept_core.trainer import evaluate_set


@pytest.fixture(scope="module")
def mpt(tokenized_root, tiny_raw):
    raw = json.loads(json.dumps(tiny_raw))
    raw["model"]["family"] = "mpt"
    raw["train"].update(rounds=2, local_steps=4, sources_per_round=2)
    cfg = validate(raw)
    runs = {v: train_variant(cfg, v, tokenized_root / PREPARED, tokenized_root / TOKENIZERS,
                             None) for v in ("glob", "trim", "spec", "spec_opt", "std")}
    return cfg, runs


def test_the_model_has_alibi_and_no_positional_parameters(mpt):
    from dept_core.model import build_model

    cfg, _ = mpt
    model = build_model(cfg.model, 50, 0)
    assert type(model).__name__ == "MptForCausalLM" and model.config.attn_config.alibi
    assert not [n for n, _ in model.named_parameters() if "pos" in n or "wpe" in n]


def test_every_variant_learns_with_alibi(mpt):
    _, runs = mpt
    for variant, (result, _) in runs.items():
        hist = result.metrics["history"]
        first = hist[0]["train_loss"]
        last = hist[-1]["train_loss"]
        assert all(last[k] < first[k] for k in last), variant


def test_the_ledger_is_table1_with_no_positional_rows(mpt):
    _, runs = mpt
    for variant in ("glob", "trim", "spec", "spec_opt"):
        m = runs[variant][0].metrics
        assert [r["down"] + r["up"] for r in m["comm"]["per_round"]] == \
            m["comm"]["table1_per_round"], variant
    spec = runs["spec"][0].metrics
    for r in spec["comm"]["per_round"]:
        assert r["down"] + r["up"] == 2 * spec["memory"]["body_bytes"] * spec["sources_per_round"]


def test_the_export_reloads_and_reproduces_the_validation_loss(mpt, tokenized_root, tmp_path):
    from transformers import AutoModelForCausalLM

    cfg, runs = mpt
    result, data = runs["spec"]
    out = export_all(cfg, result, tokenized_root / TOKENIZERS, tmp_path)
    src = out[0].name
    model = AutoModelForCausalLM.from_pretrained(str(out[0]), local_files_only=True)
    assert type(model).__name__ == "MptForCausalLM"
    assert model.num_parameters() == result.metrics["body_params"] + \
        result.metrics["embedding_params"][src]
    got = evaluate_set(model, data[src].val, torch.device("cpu"))
    assert got["loss"] == pytest.approx(result.metrics["final"]["val"][src]["loss"], rel=1e-5)


def test_a_d_ff_that_is_no_multiple_of_d_model_is_refused(tiny_raw):
    from dept_core.errors import ConfigError

    raw = json.loads(json.dumps(tiny_raw))
    raw["model"].update(family="mpt", d_ff=100)
    with pytest.raises(ConfigError, match="model.d_ff 100"):
        validate(raw)
