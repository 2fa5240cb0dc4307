"""Export plain Hugging Face model directories (config, safetensors, tokenizer).

`AutoModelForCausalLM.from_pretrained(dir, local_files_only=True)` and
`AutoTokenizer.from_pretrained(dir, local_files_only=True)` load every directory written here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from torch import Tensor

from dept_core.atomic import atomic_dir
from dept_core.config import ModelConfig
from dept_core.errors import DataError
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


def check_model_dir(model_dir: Path) -> None:
    """Raise DataError unless `model_dir` holds a model whose vocabulary its tokenizer fits.

    An exported directory always matches (bank rows = tokenizer pieces); a mismatch means a
    tokenizer or model file was replaced, and would otherwise surface as an IndexError deep
    inside the embedding lookup (or, for a smaller tokenizer, as silently wrong numbers).
    """
    from dept_core import tokenizers as tk

    model_dir = Path(model_dir)
    config, spm_file = model_dir / "config.json", model_dir / "spm.model"
    try:
        rows = int(json.loads(config.read_text())["vocab_size"])
        pieces = tk.load(spm_file).get_piece_size()
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise DataError(f"{model_dir}: not a readable exported model ({type(exc).__name__}: "
                        f"{(str(exc).splitlines() or [''])[0][:160]}); re-run the pretrain "
                        f"stage (dept train)") from None
    if rows != pieces:
        raise DataError(f"{spm_file}: tokenizer/model mismatch: the tokenizer has {pieces} "
                        f"pieces, the model's vocabulary {rows} rows ({config}); the files "
                        f"come from different runs — re-run the pretrain stage (dept train)")
