"""SentencePiece tokenizers for every DEPT variant, their sub-vocabularies and statistics.

* global: one tokenizer over the mixture of training sources (GLOB, TRIM, SPEC, STD), trained
  on a sample capped per source so that a large source does not dominate the vocabulary;
* subvocab/<source>: V_k ⊆ V, the global pieces seen at least `subvocab_min_count` times in the
  source's train split, plus the special and the 256 byte-fallback pieces. It is stored as the
  list of global ids *and* as a real SentencePiece model restricted to V_k (local id i ↔ global
  id ids[i]) — the tokenizer a TRIM/SPEC source uses. Interpretation (paper §3, TRIM): the paper
  keeps the tokens that occur in source k; keeping the byte pieces as well means any text,
  validation text included, stays encodable by the source's tokenizer with no <unk>.
  For a unigram model the restricted tokenizer segments the source's train text exactly as the
  global one does (the best path only uses kept pieces).
* spec_opt/<source>: a tokenizer of the source's own (SPEC-OPT), vocabulary size per source.

Every tokenizer directory is also a Hugging Face tokenizer (`AutoTokenizer`-loadable).
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sentencepiece as spm

from dept_core import faults
from dept_core.errors import DataError

SPECIALS = {"unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": 3}
MAX_SENTENCE_BYTES = 8192


@dataclass(frozen=True)
class TrainSpec:
    """What to train: a name (for errors), texts, and SentencePiece settings."""

    name: str
    texts: Sequence[str]
    vocab_size: int
    model_type: str = "unigram"
    character_coverage: float = 0.9995
    seed: int = 0
    key: str = "vocab_size"  # the params.yaml key that set vocab_size (named in errors)


def _sentences(texts: Sequence[str]):
    for text in texts:
        for line in text.split("\n"):
            line = line.strip()
            if line:
                yield line[:MAX_SENTENCE_BYTES // 4]


def train_sentencepiece(spec: TrainSpec) -> bytes:
    """Train a byte-fallback SentencePiece model; return the serialized model.

    Identity normalisation (the prepare stage already applied NFC) and kept whitespace make
    decode(encode(text)) == text for any UTF-8 text.
    """
    spm.set_random_generator_seed(spec.seed + 1)  # 0 would mean "random device"
    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_sentences(spec.texts), model_writer=buf,
            vocab_size=spec.vocab_size, model_type=spec.model_type, byte_fallback=True,
            normalization_rule_name="identity", remove_extra_whitespaces=False,
            character_coverage=spec.character_coverage, split_digits=True,
            max_sentence_length=MAX_SENTENCE_BYTES, input_sentence_size=0,
            num_threads=1, minloglevel=2, hard_vocab_limit=True, **SPECIALS,
        )
    except RuntimeError as exc:
        msg = str(exc).strip().splitlines()[-1]
        limit = re.search(r"value <= (\d+)", msg)
        chars = re.search(r"smaller than required_chars\. \d+ vs (\d+)", msg)
        if chars:  # more distinct characters to cover than pieces
            what, why = "small", f"its characters alone need {chars.group(1)} pieces"
            fix = f"raise {spec.key} or lower tokenizers.character_coverage"
        else:
            what = "large"
            why = (f"the text supports at most {limit.group(1)} pieces" if limit
                   else msg.split("] ")[-1])
            fix = f"lower {spec.key}, change tokenizers.character_coverage or add text"
        raise DataError(
            f"{spec.key}: {spec.vocab_size} is too {what} for tokenizer '{spec.name}' "
            f"(trained on {_trained_on(spec.name)}): {why}; {fix}"
        ) from None
    faults.point(f"spm:{spec.name}")
    return buf.getvalue()


def _trained_on(name: str) -> str:
    return "the training sources' mixture" if name == "global" else \
        f"source '{name.split('/')[-1]}'"


def load(model: bytes | Path) -> spm.SentencePieceProcessor:
    if isinstance(model, bytes):
        return spm.SentencePieceProcessor(model_proto=model)
    return spm.SentencePieceProcessor(model_file=str(model))


def encode_docs(sp: spm.SentencePieceProcessor, texts: Sequence[str]) -> list[list[int]]:
    return sp.encode(list(texts), num_threads=2) if texts else []


def token_counts(sp: spm.SentencePieceProcessor, texts: Sequence[str]) -> np.ndarray:
    """How often each id occurs when `texts` are encoded."""
    counts = np.zeros(sp.get_piece_size(), dtype=np.int64)
    for ids in encode_docs(sp, texts):
        counts += np.bincount(np.asarray(ids, dtype=np.int64), minlength=len(counts))
    return counts


def always_kept_ids(sp: spm.SentencePieceProcessor) -> list[int]:
    """Special pieces and the 256 byte-fallback pieces: part of every sub-vocabulary."""
    return [i for i in range(sp.get_piece_size())
            if sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i)
            or i in SPECIALS.values()]


def subvocab(sp: spm.SentencePieceProcessor, counts: np.ndarray, min_count: int) -> list[int]:
    """V_k: global ids seen at least `min_count` times, plus the always-kept pieces, sorted."""
    seen = set(np.flatnonzero(counts >= min_count).tolist())
    return sorted(seen | set(always_kept_ids(sp)))


def unigram_ce(train_counts: np.ndarray, eval_ids: list[list[int]]) -> float:
    """The paper's UNIGRAM-CE: cross-entropy (nats/token) of an add-one unigram model.

    The unigram model is fitted on the train-split counts and evaluated on `eval_ids`.
    """
    probs = (train_counts + 1.0) / (train_counts.sum() + len(train_counts))
    flat = np.concatenate([np.asarray(x, dtype=np.int64) for x in eval_ids if x] or [[0]])
    return float(-np.log(probs[flat]).mean())


def unigram_doc_losses(sp: spm.SentencePieceProcessor, train_texts: Sequence[str],
                       eval_texts: Sequence[str], eos: int = 2) -> list[float]:
    """Each evaluation document's loss (nats) under an add-one unigram model of the train
    texts, counting the document-closing `eos` as the language models do (one per document):
    the UNIGRAM-CE yardstick per document, comparable with a model's per-document loss."""
    counts = token_counts(sp, train_texts).astype(np.float64)
    counts[eos] += len(train_texts)
    logp = np.log((counts + 1.0) / (counts.sum() + len(counts)))
    return [float(-(logp[np.asarray(ids, dtype=np.int64)].sum() + logp[eos]))
            for ids in encode_docs(sp, eval_texts)]


def text_stats(sp: spm.SentencePieceProcessor, train_counts: np.ndarray,
               texts: Sequence[str]) -> dict:
    """Fertility, bytes per token and unigram CE (nats/token and bits/byte) on `texts`."""
    ids = encode_docs(sp, texts)
    n_tokens = sum(len(x) for x in ids)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    n_words = sum(len(t.split()) for t in texts)
    ce = unigram_ce(train_counts, ids)
    return {
        "tokens": n_tokens,
        "bytes": n_bytes,
        "fertility": n_tokens / max(n_words, 1),  # tokens per whitespace-separated word
        "bytes_per_token": n_bytes / max(n_tokens, 1),
        "unigram_ce": ce,
        "unigram_bits_per_byte": ce * n_tokens / (math.log(2) * max(n_bytes, 1)),
    }


def save_tokenizer(model: bytes, out_dir: Path) -> Path:
    """Write `spm.model` and its Hugging Face export into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    raw = out_dir.parent / f".{out_dir.name}.spm.model"
    raw.write_bytes(model)
    try:
        from dept_core.hf_tokenizer import export_hf_tokenizer  # (see save_subvocab)

        export_hf_tokenizer(raw, out_dir)
    finally:
        raw.unlink(missing_ok=True)
    return out_dir / "spm.model"


def save_subvocab(global_model: Path, ids: list[int], out_dir: Path) -> list[int]:
    """Write V_k as `ids.json` and as a restricted SentencePiece + HF tokenizer in `out_dir`.

    Returns the kept global ids in local order. Single-character pieces that a kept piece
    is made of are added back (without them the HF and SentencePiece segmentations of the
    restricted model could differ), so the result may be slightly larger than `ids`.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    raw = out_dir.parent / f".{out_dir.name}.spm.model"
    try:
        # imported here: sentencepiece's model protobuf needs protobuf >= 7, which the Flower
        # environment (flwr pins protobuf < 7) lacks; training never writes tokenizers
        from dept_core.hf_tokenizer import export_hf_tokenizer, trim_spm_model

        kept = trim_spm_model(global_model, ids, raw, add_char_pieces=True)
        export_hf_tokenizer(raw, out_dir)
    finally:
        raw.unlink(missing_ok=True)
    (out_dir / "ids.json").write_text(json.dumps({"global_ids": kept}) + "\n")
    return kept


def read_subvocab(tok_dir: Path) -> list[int]:
    return json.loads((Path(tok_dir) / "ids.json").read_text())["global_ids"]


# ------------------------------------------------------------------------ the whole stage ----
def capped(texts: Sequence[str], max_bytes: int) -> list[str]:
    """Leading texts up to `max_bytes` of UTF-8 (at least one)."""
    out, total = [], 0
    for t in texts:
        if out and total >= max_bytes:
            break
        out.append(t)
        total += len(t.encode("utf-8"))
    return out


def plan(cfg, train_texts: dict[str, list[str]]) -> tuple[TrainSpec, dict[str, TrainSpec]]:
    """The global tokenizer and the per-source (SPEC-OPT) tokenizers to train."""
    tc = cfg.tokenizers
    mixture = [t for name in cfg.data.train_sources
               for t in capped(train_texts[name], tc.sample_bytes_per_source)]
    common = dict(model_type=tc.model_type, character_coverage=tc.character_coverage,
                  seed=cfg.seed)
    glob_spec = TrainSpec("global", mixture, tc.global_vocab_size, **common,
                          key="tokenizers.global_vocab_size")
    per_source = {
        name: TrainSpec(f"spec_opt/{name}", train_texts[name],
                        tc.per_source_vocab_overrides.get(name, tc.per_source_vocab_size),
                        **common, key=(f"tokenizers.per_source_vocab_overrides.{name}"
                                       if name in tc.per_source_vocab_overrides
                                       else "tokenizers.per_source_vocab_size"))
        for name in cfg.data.train_sources
    }
    return glob_spec, per_source


def assemble(cfg, train_texts: dict[str, list[str]], val_texts: dict[str, list[str]],
             global_model: bytes, spec_opt_models: dict[str, bytes], out_dir: Path) -> dict:
    """Write every tokenizer into `out_dir` and return the statistics.

    Layout: global/, subvocab/<source>/ (with ids.json), spec_opt/<source>/, stats.json.
    """
    out_dir = Path(out_dir)
    sp = load(global_model)
    global_path = save_tokenizer(global_model, out_dir / "global")
    stats: dict = {"global": {"vocab_size": sp.get_piece_size(), "sources": {}},
                   "subvocab": {}, "spec_opt": {}}
    for name in [s.name for s in cfg.data.sources]:
        counts = token_counts(sp, train_texts[name])
        entry = text_stats(sp, counts, val_texts[name])
        stats["global"]["sources"][name] = entry
        if name not in spec_opt_models:  # held-out sources get no tokenizer of their own
            continue
        ids = save_subvocab(global_path, subvocab(sp, counts, cfg.tokenizers.subvocab_min_count),
                            out_dir / "subvocab" / name)
        entry["subvocab_size"] = len(ids)
        stats["subvocab"][name] = {"vocab_size": len(ids), "global_vocab_size": len(counts),
                                   "fraction_of_global": len(ids) / len(counts)}
    for name, model in spec_opt_models.items():
        own = load(model)
        save_tokenizer(model, out_dir / "spec_opt" / name)
        entry = text_stats(own, token_counts(own, train_texts[name]), val_texts[name])
        stats["spec_opt"][name] = {"vocab_size": own.get_piece_size(), **entry}
    build_stores(out_dir, train_texts, [s.name for s in cfg.data.sources], list(spec_opt_models))
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
    return stats


def build_stores(out_dir: Path, train_texts: dict[str, list[str]], sources: list[str],
                 trained: list[str]) -> None:
    """The pre-tokenised train splits (`dept_core.token_store`): the global tokenizer's ids of
    every source; V_k's and the source's own tokenizer's ids of each training source."""
    from dept_core import token_store as ts

    jobs = [("global", out_dir / "global", n) for n in sources]
    jobs += [(kind, out_dir / kind / n, n) for kind in ("subvocab", "spec_opt") for n in trained]
    for kind, tok_dir, name in jobs:
        sp = load(tok_dir / "spm.model")
        ts.write_store(ts.encode_in_chunks(sp, train_texts[name]), sp.get_piece_size(),
                       tok_dir / "spm.model", ts.store_dir(out_dir, kind, name))
