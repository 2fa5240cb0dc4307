"""ACT (active forgetting): STD whose token embeddings are re-initialised every K steps."""

from __future__ import annotations

import json

import pytest
import torch

from dept_core import layout, std
from dept_core.batches import derived_seed
from dept_core.config_io import validate
from dept_core.layout import PREPARED, TOKENIZERS
from dept_core.model import build_model, get_body, init_bank
from dept_core.run import train_variant, write_outputs
from dept_core.trainer import make_optimizer
from tests.conftest import linked_project


def _cfg(tiny_raw, **train):
    raw = json.loads(json.dumps(tiny_raw))
    raw["train"].update(dict(rounds=2, local_steps=5, batch_size=4, warmup_steps=1,
                             variants=["std", "act"]), **train)
    return validate(raw)


@pytest.mark.parametrize("k, resets", [(3, [3, 6, 9]), (5, [5]), (4, [4, 8]), (20, [])])
def test_act_reinitialises_exactly_after_steps_k_2k_and_never_at_the_last(
        monkeypatch, tokenized_root, tiny_raw, k, resets):
    """10 steps (2 rounds × 5): resets after steps K, 2K, ... < 10, across round edges."""
    cfg = _cfg(tiny_raw, act_every=k)
    seen = []
    real = std.forget_embeddings

    def spy(model, opt, cfg_, step):
        seen.append(step)
        real(model, opt, cfg_, step)

    monkeypatch.setattr(std, "forget_embeddings", spy)
    train_variant(cfg, "act", tokenized_root / PREPARED, tokenized_root / TOKENIZERS, None)
    assert seen == resets
    seen.clear()
    train_variant(cfg, "std", tokenized_root / PREPARED, tokenized_root / TOKENIZERS, None)
    assert seen == []  # STD never forgets


def test_forgetting_draws_seeded_fresh_rows_drops_their_state_and_keeps_the_body(tiny_cfg):
    model = build_model(tiny_cfg.model, 300, 0)
    opt = make_optimizer(model, tiny_cfg.train)
    batch = torch.randint(0, 300, (2, 17), generator=torch.Generator().manual_seed(1))
    model(input_ids=batch, labels=batch).loss.backward()
    opt.step()
    emb = model.get_input_embeddings().weight
    assert emb in opt.state
    body = {k: v.clone() for k, v in get_body(model).items()}
    std.forget_embeddings(model, opt, tiny_cfg, 7)
    gen = torch.Generator().manual_seed(derived_seed(tiny_cfg.train.seed, "act", "7"))
    assert torch.equal(emb, init_bank(tiny_cfg.model, 300, gen)["tok"])
    assert model.get_output_embeddings().weight is emb  # tied: the head is the same matrix
    assert emb not in opt.state
    assert all(torch.equal(v, get_body(model)[k]) for k, v in body.items())


def test_act_is_evaluated_like_the_others(tokenized_root, tiny_raw, tmp_path):
    """act has rows in the comparison (vs STD, with intervals) and in the plasticity table."""
    from dept_core import report
    from dept_core.accel import pick_device
    from dept_core.evaluate import run_protocol
    from tasks.compare import read_results

    raw = json.loads(json.dumps(tiny_raw))
    raw["train"].update(rounds=2, local_steps=4, batch_size=4, warmup_steps=1, act_every=3,
                        variants=["std", "act"])
    raw["evaluate"] = {"cpt_fraction": 0.2, "plasticity_steps": 4, "plasticity_eval_every": 2,
                       "downstream": {"steps": 0}, "reference": False, "bootstrap": 200,
                       "probe": {"steps": 0}, "minimal_pairs": {"items_per_source": 0}}
    cfg = validate(raw)
    root = tmp_path / "proj"
    linked_project(root, tokenized_root)
    for v in ("std", "act"):
        res, _ = train_variant(cfg, v, root / PREPARED, root / TOKENIZERS, None)
        write_outputs(cfg, res, root / TOKENIZERS, layout.pretrain_dir(root, v, 0))
        out = run_protocol(cfg, v, root, pick_device("cpu"), lambda _: None)
        path = layout.evaluate_metrics(root, v, 0)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out))
    metrics, evals = read_results(root, ["std", "act"], [0])
    summary = report.comparison(metrics, evals, report.settings_of(cfg), 200)
    tables = summary["evaluation"]["tables"]
    assert "vs_std_pct" in tables["as_trained"]["act"]["id"]
    assert "vs_std_pct" in tables["cpt_fresh"]["act"]["id"]
    assert "act" in summary["evaluation"]["plasticity"]
    md = report.markdown(summary)
    assert "| act |" in md
