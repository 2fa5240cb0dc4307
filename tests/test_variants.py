"""The variant registry is the one place a variant is declared (issue 11)."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dept_core import variants
from dept_core.config_io import validate
from dept_core.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def throwaway():
    """A new variant reusing the SPEC policy with the global tokenizer (per-source embeddings
    over the whole V, never sent): registered for one test, then removed."""
    v = variants.register(variants.Variant(
        "spec_full", "SPEC over the full global vocabulary", tokenizer="global",
        policy="spec", local_banks_only=True))
    yield v
    variants.unregister(v.name)


def test_registering_a_variant_is_all_the_pipeline_needs(throwaway, tiny_raw, tmp_path,
                                                         tokenized_root):
    from dept_core.layout import PREPARED, TOKENIZERS
    from dept_core.run import train_variant
    from flows.cli import build_parser

    # the CLI
    for cmd in ("train", "evaluate"):
        args = build_parser().parse_args([cmd, "--variant", "spec_full"])
        assert args.variant == "spec_full"
    # the config
    raw = json.loads(json.dumps(tiny_raw))
    raw["train"].update(variants=["glob", "spec_full"], seeds=[0], rounds=1, local_steps=2,
                        batch_size=4)
    cfg = validate(raw)
    assert cfg.train.variants == ["glob", "spec_full"]
    # the DVC stages (foreach over train.variants in params.yaml)
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, tmp_path / name)
    shutil.copytree(REPO / ".dvc", tmp_path / ".dvc", ignore=shutil.ignore_patterns("tmp",
                                                                                    "cache"))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    dvc = str(Path(sys.executable).parent / "dvc")
    listed = subprocess.run([dvc, "stage", "list", "--name-only"], cwd=tmp_path,
                            capture_output=True, text=True, check=True).stdout.split()
    assert {"pretrain@spec_full-0", "evaluate@spec_full-0"} <= set(listed)
    # and it trains: one round, with the policy and tokenizer layout it declared
    result, _ = train_variant(cfg, "spec_full", tokenized_root / PREPARED,
                              tokenized_root / TOKENIZERS, None)
    assert result.global_bank is None and result.metrics["variant"] == "spec_full"
    assert {b["tok"].shape[0] for b in result.banks.values()} == {1000}  # |V|, per source
    assert result.metrics["comm"]["per_round"][0]["down"] * 2 == \
        result.metrics["comm"]["table1_per_round"][0]


def test_unknown_variants_are_config_errors_naming_the_known_ones(tiny_raw):
    raw = json.loads(json.dumps(tiny_raw))
    raw["train"]["variants"] = ["glob", "globb"]
    with pytest.raises(ConfigError, match=r"train.variants: unknown variant 'globb' \(known: "
                                          r"glob, trim, spec, spec_opt, std, act\)"):
        validate(raw)
    raw["train"]["variants"] = ["spec"]
    raw["evaluate"] = {"cpt_from_pretrained": ["spec"]}
    with pytest.raises(ConfigError, match="evaluate.cpt_from_pretrained: variant 'spec' has "
                                          "no global embedding"):
        validate(raw)


def test_registry_entries_agree_with_their_policies():
    from dept_core.policies import POLICIES

    for v in variants.REGISTRY.values():
        if v.centralised:
            assert v.has_global_bank
            continue
        assert POLICIES[v.policy].server_bank == v.has_global_bank, v.name
        if POLICIES[v.policy].needs_subvocab:
            assert v.tokenizer == "subvocab", v.name


def test_no_module_outside_the_registry_tests_a_variant_name():
    """`variant == "std"`, `in ("spec", "spec_opt")`, ...: such tests belong to the registry."""
    names = set(variants.names())
    offenders = []
    for path in [*REPO.glob("dept_core/*.py"), *REPO.glob("tasks/*.py"),
                 *REPO.glob("flows/*.py")]:
        if path.name == "variants.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                consts = [c for c in ast.walk(node) if isinstance(c, ast.Constant)]
                if any(isinstance(c.value, str) and c.value in names for c in consts):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == []
