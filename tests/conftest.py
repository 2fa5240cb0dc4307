"""Shared fixtures: tiny real-text projects built once per session (2-core machine)."""

from __future__ import annotations

import os
import tempfile

# Before anything imports prefect: a Prefect home of the test session's own (its result cache
# must not leak between sessions), no hub access, no telemetry.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="dept-test-prefect-")
# the migrated Prefect store new projects start from (flows/prefect_app.py): the session's own
os.environ["DEPT_CACHE_DIR"] = tempfile.mkdtemp(prefix="dept-test-cache-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402

from dept_core.config_io import validate  # noqa: E402

TINY = {
    "seed": 0,
    "data": {"sources": [
        {"name": "en", "kind": "embedded", "preset": "multilingual"},
        {"name": "de", "kind": "embedded", "preset": "multilingual"},
        {"name": "ja", "kind": "embedded", "preset": "multilingual"},
        {"name": "es", "kind": "embedded", "preset": "multilingual", "heldout": True},
    ]},
    "prepare": {"min_doc_chars": 100, "max_bytes_per_source": 200000,
                "val_bytes": 20000, "test_bytes": 20000},
    "tokenizers": {"global_vocab_size": 1000, "per_source_vocab_size": 400,
                   "sample_bytes_per_source": 100000, "character_coverage": 0.99,
                   "per_source_vocab_overrides": {"ja": 900}},
    "model": {"size": "tiny", "max_seq_len": 64},
    "train": {"rounds": 8, "sources_per_round": 3, "local_steps": 25, "batch_size": 32,
              "seq_len": 64, "lr": 0.003, "warmup_steps": 10, "schedule": "random"},
}


def linked_project(root: Path, source: Path) -> Path:
    """A project directory at `root` whose data/prepared and data/tokenizers are links to
    `source`'s (a built project): its own checkpoints/ and results/, the same data."""
    from dept_core.layout import PREPARED, TOKENIZERS

    for sub in (PREPARED, TOKENIZERS):
        (root / sub).parent.mkdir(parents=True, exist_ok=True)
        (root / sub).symlink_to(source / sub)
    return root


def write_params(root: Path, raw: dict) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_raw() -> dict:
    return yaml.safe_load(yaml.safe_dump(TINY))  # a deep copy


@pytest.fixture(scope="session")
def tiny_cfg(tiny_raw):
    return validate(tiny_raw)


@pytest.fixture(scope="session")
def prepared_root(tmp_path_factory, tiny_raw, tiny_cfg) -> Path:
    """A project with params.yaml and data/prepared built from the embedded corpus."""
    from dept_core.data import prepare, write_prepared
    from dept_core.layout import PREPARED

    root = tmp_path_factory.mktemp("tiny")
    write_params(root, tiny_raw)
    write_prepared(prepare(tiny_cfg, root), root / PREPARED, set(tiny_cfg.data.heldout_sources))
    return root


@pytest.fixture(scope="session")
def tokenized_root(prepared_root, tiny_cfg) -> Path:
    """The same project with data/tokenizers built (in-process, no Prefect)."""
    from dept_core import tokenizers as tk
    from dept_core.data import read_split
    from dept_core.layout import PREPARED, TOKENIZERS

    names = [s.name for s in tiny_cfg.data.sources]
    train = {n: read_split(prepared_root / PREPARED, n, "train") for n in names}
    val = {n: read_split(prepared_root / PREPARED, n, "val") for n in names}
    glob_spec, per_source = tk.plan(tiny_cfg, train)
    models = {n: tk.train_sentencepiece(s) for n, s in per_source.items()}
    tk.assemble(tiny_cfg, train, val, tk.train_sentencepiece(glob_spec), models,
                prepared_root / TOKENIZERS)
    return prepared_root


@pytest.fixture(scope="session")
def prefect_server():
    """One real (temporary, local) Prefect server for every test that runs a flow."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def trained(tokenized_root, tiny_cfg):
    """Every variant trained once on the tiny preset: {variant: (RunResult, data)}."""
    from dept_core.variants import names
    from dept_core.layout import CHECKPOINTS, PREPARED, TOKENIZERS
    from dept_core.run import train_variant

    return {v: train_variant(tiny_cfg, v, tokenized_root / PREPARED, tokenized_root / TOKENIZERS,
                             tokenized_root / CHECKPOINTS / v)
            for v in names()}


# ------------------------------------------------- the `dept` CLI as a subprocess (issue 7) ----
REPO = Path(__file__).resolve().parent.parent
# The smoke config with two variants (a global and a per-source embedding policy): the reference
# project of the bad-input matrix and the uninterrupted run the kill -9 tests compare with.
CLI_VARIANTS = ["glob", "spec"]


def cli_params() -> dict:
    raw = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    raw["train"]["variants"] = list(CLI_VARIANTS)
    return raw


def dept_cli(args: list[str], cwd: Path, env: dict, timeout: float = 600):
    """`dept ARGS` in `cwd` (a subprocess, exactly as a user runs it)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def cli_env(prefect_server) -> dict:
    """Environment for `dept` subprocesses: the session's Prefect server (no server start-up
    per process), the repository on the path, no hub, no fault injection."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(REPO),
           "HF_HUB_OFFLINE": "1"}
    for key in ("DEPT_FAULT_KILL_AT", "DEPT_FAULT_SIGNAL_AT", "DEPT_FAULT_ENOSPC_AT",
                "DEPT_NO_WAIT", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    return env


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, cli_env) -> Path:
    """A project that went through one uninterrupted `dept run` (read it, never modify it)."""
    root = tmp_path_factory.mktemp("reference")
    write_params(root, cli_params())
    proc = dept_cli(["run"], root, cli_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root
