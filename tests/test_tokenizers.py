"""Tokenizers: plain SentencePiece round trips, V_k ⊂ V, stats, HF parity, bad input."""

import json
import random

import pytest
import sentencepiece as spm

from dept_core import tokenizers as tk
from dept_core.data import read_split
from dept_core.errors import DataError

TRICKY = ["", " ", "  leading and trailing  ", "tab\there", "a\n\nb\n", "émoji 🧪🚀 ok",
          "\u00e9 vs e\u0301", "𠜎𠜱𠝹 rare CJK", "Привет, мир!", "日本語のテキスト。",
          "中文文本，标点。", "\x7fDEL and \u200bzero width", "<s> not special </s>"]


def random_text(rng: random.Random, n: int = 80) -> str:
    """Random code points across scripts, including ones no tokenizer has seen."""
    ranges = [(0x20, 0x7e), (0xc0, 0x24f), (0x400, 0x4ff), (0x3040, 0x30ff),
              (0x4e00, 0x9fff), (0x1f300, 0x1f64f), (0x10000, 0x1ffff)]
    out = []
    for _ in range(n):
        lo, hi = rng.choice(ranges)
        c = chr(rng.randint(lo, hi))
        out.append(c if not 0xd800 <= ord(c) <= 0xdfff else "x")
    return "".join(out) + rng.choice(["", "\n", " "])


def all_tokenizer_dirs(root):
    tok = root / "data/tokenizers"
    return [tok / "global", *sorted((tok / "subvocab").iterdir()),
            *sorted((tok / "spec_opt").iterdir())]


def test_every_tokenizer_round_trips_any_text(tokenized_root, tiny_cfg):
    rng = random.Random(0)
    samples = TRICKY + [random_text(rng) for _ in range(40)]
    for name in [s.name for s in tiny_cfg.data.sources]:  # real text of every language
        samples += read_split(tokenized_root / "data/prepared", name, "val")[:3]
    for d in all_tokenizer_dirs(tokenized_root):
        sp = spm.SentencePieceProcessor(model_file=str(d / "spm.model"))
        for text in samples:
            assert sp.decode(sp.encode(text)) == text, (d.name, text[:40])


def test_subvocabularies_are_proper_subsets(tokenized_root, tiny_cfg):
    stats = json.loads((tokenized_root / "data/tokenizers/stats.json").read_text())
    v = stats["global"]["vocab_size"]
    assert set(stats["subvocab"]) == set(tiny_cfg.data.train_sources)
    for name, entry in stats["subvocab"].items():
        ids = tk.read_subvocab(tokenized_root / "data/tokenizers/subvocab" / name)
        assert entry["vocab_size"] == len(ids) < v
        assert ids == sorted(set(ids)) and ids[:4] == [0, 1, 2, 3]
        assert stats["global"]["sources"][name]["subvocab_size"] == len(ids)
        sub = spm.SentencePieceProcessor(
            model_file=str(tokenized_root / f"data/tokenizers/subvocab/{name}/spm.model"))
        assert sub.get_piece_size() == len(ids)


def test_subvocab_tokenizer_segments_train_text_like_the_global_one(tokenized_root):
    glob = tk.load(tokenized_root / "data/tokenizers/global/spm.model")
    d = tokenized_root / "data/tokenizers/subvocab/de"
    sub, ids = tk.load(d / "spm.model"), tk.read_subvocab(d)
    for text in read_split(tokenized_root / "data/prepared", "de", "train")[:20]:
        assert [ids[i] for i in sub.encode(text)] == glob.encode(text)


def test_stats_report_the_yardsticks(tokenized_root, tiny_cfg):
    stats = json.loads((tokenized_root / "data/tokenizers/stats.json").read_text())
    for name in [s.name for s in tiny_cfg.data.sources]:
        e = stats["global"]["sources"][name]
        assert 0 < e["unigram_ce"] < 10 and e["bytes_per_token"] > 1 and e["fertility"] > 0
        assert e["unigram_bits_per_byte"] == pytest.approx(
            e["unigram_ce"] * e["tokens"] / (0.6931471805599453 * e["bytes"]))
    for name in tiny_cfg.data.train_sources:
        assert stats["spec_opt"][name]["vocab_size"] == (900 if name == "ja" else 400)


def test_exported_tokenizers_match_sentencepiece_ids(tokenized_root):
    from transformers import AutoTokenizer

    lines = [ln for name in ("en", "ja") for doc in read_split(
        tokenized_root / "data/prepared", name, "val")[:4] for ln in doc.split("\n") if ln]
    for d in all_tokenizer_dirs(tokenized_root):
        sp = spm.SentencePieceProcessor(model_file=str(d / "spm.model"))
        hf = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
        for text in lines + TRICKY[:-1]:  # literal "<s>": see dept_core/hf_tokenizer.py
            ids = sp.encode(text)
            assert hf(text, add_special_tokens=False)["input_ids"] == ids, (d.name, text)
            assert hf.decode(ids) == sp.decode(ids)


def test_unigram_ce_by_hand():
    import numpy as np

    counts = np.array([3, 1, 0, 0])          # add-one: p = [4, 2, 1, 1] / 8
    ce = tk.unigram_ce(counts, [[0, 1], [1]])
    assert ce == pytest.approx(-(np.log(4 / 8) + 2 * np.log(2 / 8)) / 3)


def test_training_is_deterministic(tiny_cfg, tokenized_root):
    texts = read_split(tokenized_root / "data/prepared", "en", "train")
    spec = tk.TrainSpec("en", texts, 400, seed=3)
    assert tk.train_sentencepiece(spec) == tk.train_sentencepiece(spec)


def test_source_too_small_for_vocabulary_names_it(tokenized_root):
    texts = read_split(tokenized_root / "data/prepared", "en", "val")[:1]
    with pytest.raises(DataError, match=r"20000 is too large for tokenizer 'spec_opt/en'"):
        tk.train_sentencepiece(tk.TrainSpec("spec_opt/en", texts, 20000))
