"""DEPT: Decoupled Embeddings for Pre-Training (ICLR 2025) — the method, free of orchestration.

This package never imports prefect, mlflow or dvc; `tasks/` and `flows/` adapt it.
"""

from pathlib import Path

__version__ = "0.1.0"

#: Repository root (the package is installed editable; the embedded corpus lives beside it).
REPO_ROOT = Path(__file__).resolve().parent.parent
