"""Export plain Hugging Face model directories (config, safetensors, tokenizer).

`AutoModelForCausalLM.from_pretrained(dir, local_files_only=True)` and
`AutoTokenizer.from_pretrained(dir, local_files_only=True)` load every directory written here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from torch import Tensor

from dept_core.atomic import atomic_dir
from dept_core.config import ModelConfig
from dept_core.model import build_model, load_body, set_bank

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "spm.model")


def export_model(mcfg: ModelConfig, body: dict[str, Tensor], bank: dict[str, Tensor],
                 tokenizer_dir: Path, out_dir: Path) -> Path:
    """Body + one bank + its tokenizer as an HF model directory (written atomically)."""
    vocab = bank["tok"].shape[0]
    model = build_model(mcfg, vocab, seed=0)
    load_body(model, body)
    set_bank(model, bank)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        for name in TOKENIZER_FILES:
            src = Path(tokenizer_dir) / name
            if src.is_file():
                shutil.copy2(src, tmp / name)
    return Path(out_dir)
