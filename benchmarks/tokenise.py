"""Tokenisation throughput into the pre-tokenised store, and what it means at paper scale.

    python benchmarks/tokenise.py [--reps 3] [--vocab 2000 8000]

Measures, on this machine (2 cores: SentencePiece encodes with 2 threads), the whole path the
tokenizers stage takes to build a store (`dept_core.token_store`: encode in chunks, write the
uint16/uint32 shards, hash them): text bytes/s, tokens/s and bytes per token, over the
embedded corpus's 8 languages (real text; unigram models of each `--vocab` trained on it).
Then extrapolates, for each paper preset (configs/paper-*.yaml), the build time: every
source's `prepare.max_bytes_per_source` through the global tokenizer, and each training
source's again through V_k and its own tokenizer (3 layouts), at the measured bytes/s of the
largest vocabulary; the tokens and disk each source's store holds; and how many passes over
it one run's training reads (rounds × N_local × batch × sequence per source).

Caveat: a 250 112-piece vocabulary cannot be trained on 2.7 MB of text; larger vocabularies
give more bytes per token (fewer tokens), and encode at a similar rate per byte (the two
sizes measured here show the trend).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import REPO, median, validate  # noqa: F401  (sets sys.path)

import yaml  # noqa: E402

from dept_core import token_store as ts  # noqa: E402
from dept_core import tokenizers as tk  # noqa: E402
from dept_core.data import prepare, read_split, write_prepared  # noqa: E402
from dept_core.layout import PREPARED  # noqa: E402

PRESETS = ["paper-125m", "paper-350m", "paper-1.3b", "paper-pile-350m"]
LANGS = ["en", "de", "fr", "ru", "ja", "zh", "es", "it"]


def corpus(root: Path) -> dict[str, list[str]]:
    raw = {"data": {"sources": [{"name": n, "kind": "embedded", "preset": "multilingual"}
                                for n in LANGS]},
           "prepare": {"min_doc_chars": 100}}
    cfg = validate(raw)
    write_prepared(prepare(cfg, root), root / PREPARED, set())
    return {n: read_split(root / PREPARED, n, "train") for n in LANGS}


def measure(texts: dict[str, list[str]], vocab: int, reps: int, root: Path) -> dict:
    mixture = [t for n in LANGS for t in tk.capped(texts[n], 300_000)]
    model = tk.train_sentencepiece(tk.TrainSpec("global", mixture, vocab, model_type="unigram",
                                                character_coverage=0.9995, seed=0))
    tok = root / f"spm-{vocab}.model"
    tok.write_bytes(model)
    sp = tk.load(tok)
    nbytes = sum(len(t.encode("utf-8")) for v in texts.values() for t in v)
    times, tokens = [], 0
    for r in range(reps):
        start = time.perf_counter()
        tokens = 0
        for n in LANGS:
            index = ts.write_store(ts.encode_in_chunks(sp, texts[n]), sp.get_piece_size(), tok,
                                   root / f"store-{vocab}-{r}" / n)
            tokens += index["tokens"]
        times.append(time.perf_counter() - start)
    s = median(times)
    return {"vocab": vocab, "bytes": nbytes, "tokens": tokens, "seconds": s,
            "bytes_per_s": nbytes / s, "tokens_per_s": tokens / s,
            "bytes_per_token": nbytes / tokens}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--vocab", type=int, nargs="+", default=[2000, 8000])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="dept-bench-tok-") as tmp:
        root = Path(tmp)
        texts = corpus(root)
        rows = [measure(texts, v, args.reps, root) for v in args.vocab]
    print(f"store build on this machine (8 languages, real text; median of {args.reps}):")
    print(f"{'vocab':>6s} {'text MB':>8s} {'tokens':>9s} {'s':>6s} {'MB/s':>6s} "
          f"{'tokens/s':>10s} {'bytes/token':>11s}")
    for r in rows:
        print(f"{r['vocab']:6d} {r['bytes'] / 1e6:8.2f} {r['tokens']:9d} {r['seconds']:6.2f} "
              f"{r['bytes_per_s'] / 1e6:6.2f} {r['tokens_per_s']:10.0f} "
              f"{r['bytes_per_token']:11.2f}")
    rate, bpt = rows[-1]["bytes_per_s"], rows[-1]["bytes_per_token"]
    print(f"\nextrapolated (at {rate / 1e6:.2f} MB/s and {bpt:.2f} bytes/token, the "
          f"{rows[-1]['vocab']}-piece model's):")
    print(f"{'preset':16s} {'text/src GB':>11s} {'layouts x GB':>12s} {'build h':>8s} "
          f"{'tokens/src B':>12s} {'disk GB':>8s} {'read/src B':>10s} {'passes':>7s}")
    for name in PRESETS:
        cfg = validate(yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text()))
        per_src = cfg.prepare.max_bytes_per_source
        n_all, n_train = len(cfg.data.sources), len(cfg.data.train_sources)
        text = per_src * (n_all + 2 * n_train)  # global: all; V_k and own: training ones
        tokens = per_src / bpt
        itemsize = ts.dtype_for(cfg.tokenizers.global_vocab_size).itemsize
        own_size = ts.dtype_for(cfg.tokenizers.per_source_vocab_size).itemsize
        disk = tokens * (n_all * itemsize + n_train * (itemsize + own_size))
        t = cfg.train
        read = t.rounds * t.local_steps * t.batch_size * t.seq_len
        print(f"{name:16s} {per_src / 1e9:11.1f} {text / 1e9:12.0f} {text / rate / 3600:8.1f} "
              f"{tokens / 1e9:12.2f} {disk / 1e9:8.0f} {read / 1e9:10.2f} "
              f"{read / tokens:7.1f}")
    print("(build h: one process on 2 cores; sources are independent, so k processes on k "
          "cores divide it by ~k/2)")


if __name__ == "__main__":
    main()
