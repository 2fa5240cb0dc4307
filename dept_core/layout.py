"""Where each stage reads and writes, relative to the project root.

Every path a stage, task, flow or test builds comes from here, so the layout can change in
one place. `root` is the project root (the directory holding params.yaml).
"""

from pathlib import Path

PREPARED = Path("data/prepared")
TOKENIZERS = Path("data/tokenizers")
RESULTS = Path("results")
CHECKPOINTS = Path("checkpoints")


def prepared(root: Path) -> Path:
    return Path(root) / PREPARED


def tokenizers(root: Path) -> Path:
    return Path(root) / TOKENIZERS


def tokenizer_stats(root: Path) -> Path:
    return Path(root) / RESULTS / "tokenizers" / "stats.json"


def pretrain_dir(root: Path, variant: str, seed: int) -> Path:
    """results/pretrain/<variant>/seed-<seed>/: metrics.json and models/ (one HF model per
    source) of one training seed."""
    return Path(root) / RESULTS / "pretrain" / variant / f"seed-{seed}"


def pretrain_metrics(root: Path, variant: str, seed: int) -> Path:
    return pretrain_dir(root, variant, seed) / "metrics.json"


def models_dir(root: Path, variant: str, seed: int) -> Path:
    return pretrain_dir(root, variant, seed) / "models"


def evaluate_dir(root: Path, variant: str, seed: int) -> Path:
    return Path(root) / RESULTS / "evaluate" / variant / f"seed-{seed}"


def evaluate_metrics(root: Path, variant: str, seed: int) -> Path:
    return evaluate_dir(root, variant, seed) / "metrics.json"


def compare_dir(root: Path) -> Path:
    return Path(root) / RESULTS / "compare"


def checkpoint_dir(root: Path, variant: str, key: str) -> Path:
    """checkpoints/<variant>-<run key>/: a run resumes only from a checkpoint of its own
    configuration and data (`dept_core.run.run_key`)."""
    return Path(root) / CHECKPOINTS / f"{variant}-{key}"


def study_dir(root: Path, name: str) -> Path:
    """studies/<name>/: the cells (one project directory each) and their shared data."""
    return Path(root) / "studies" / name


def study_cell(root: Path, name: str, cell_id: str) -> Path:
    return study_dir(root, name) / "cells" / cell_id


def study_data(root: Path, name: str, data_key: str) -> Path:
    """Prepared data and tokenizers shared by the cells whose data sections agree."""
    return study_dir(root, name) / "data" / data_key


def study_report(root: Path, name: str) -> Path:
    return Path(root) / RESULTS / "study" / name
