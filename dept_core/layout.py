"""Where each stage reads and writes, relative to the project root (the working directory)."""

from pathlib import Path

PREPARED = Path("data/prepared")
TOKENIZERS = Path("data/tokenizers")
RESULTS = Path("results")
CHECKPOINTS = Path("checkpoints")


def tokenizer_stats(root: Path) -> Path:
    return root / RESULTS / "tokenizers" / "stats.json"
