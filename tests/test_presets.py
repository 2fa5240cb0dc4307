"""The paper-scale presets carry the paper's facts (DEPT, ICLR 2025, §4 and its appendix):
N_local = 500, the rounds per model, every source every round, the mC4 languages and The Pile's
subsets, the vocabulary sizes, CPT at 15-19 % — and the recipe's batch via accumulation."""

from __future__ import annotations

import pytest
import yaml

from dept_core.config_io import validate
from tests.conftest import REPO

ROUNDS = {"paper-125m": 10, "paper-350m": 27, "paper-1.3b": 14, "paper-pile-350m": 27}
BATCH = {"paper-125m": 256, "paper-350m": 256, "paper-1.3b": 512, "paper-pile-350m": 256}
MC4 = ["en", "it", "zh", "sr", "ms", "sw", "ur", "la"]


@pytest.mark.parametrize("name", sorted(ROUNDS))
def test_preset_is_the_papers_regime(name):
    cfg = validate(yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text()))
    t = cfg.train
    assert t.local_steps == 500 and t.rounds == ROUNDS[name]
    assert t.sources_per_round == len(cfg.data.train_sources)  # full participation
    assert t.batch_size == BATCH[name] and t.seq_len == 2048 == cfg.model.max_seq_len
    assert t.micro_batch_size and t.batch_size % t.micro_batch_size == 0
    assert 0.15 <= cfg.evaluate.cpt_fraction <= 0.19
    assert cfg.tokenizers.per_source_vocab_size == 50257
    if "pile" in name:
        assert len(cfg.data.train_sources) == 16 and cfg.data.heldout_sources == ["ubuntu_irc"]
        assert cfg.tokenizers.global_vocab_size == 50257
    else:
        assert cfg.data.train_sources == MC4 and cfg.data.heldout_sources == ["el", "hi", "de"]
        assert cfg.tokenizers.global_vocab_size == 250112


def test_meta_device_table_matches_the_papers_figures():
    """benchmarks/paper_scale.py (meta device: nothing allocated) against the paper's own
    parameter counts; TRIM's row rests on an assumed |V_k|/|V| and is left out here."""
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    import paper_scale

    rows, figures = paper_scale.table(trim_share=0.86)
    assert {r["preset"] for r in rows} == set(paper_scale.PRESETS)
    for name, fig, paper in paper_scale.PAPER:
        if "trim" not in fig:
            assert abs(figures[(name, fig)] / paper - 1) < 0.05, (name, fig)
    assert all(r["gpu_gib"] > 0 for r in rows)


def test_the_gpu_check_dry_run_passes():
    """benchmarks/gpu_check.sh --dry-run: every step of the GPU check at toy size on the CPU
    (the environment, the inner loop with compile off and on, the 2-rank torchrun backend)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(["bash", str(REPO / "benchmarks/gpu_check.sh"), "--dry-run"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=480)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert out.splitlines()[-1] == "gpu_check: ok"
    for line in ("environment: torch", "inner loop, compile off", "inner loop, compile on",
                 "torchrun, 2 ranks (gloo)"):
        assert line in out, line
