"""The pre-tokenised, sharded token store (dept_core.token_store) against on-the-fly encoding."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from dept_core import token_store as ts
from dept_core.batches import BatchSampler, token_stream
from dept_core.errors import DataError
from dept_core.layout import PREPARED, TOKENIZERS
from dept_core.sourcedata import load_sources, tokenizer_dir, train_stream


@pytest.mark.parametrize("vocab,dtype", [(1000, "<u2"), (70000, "<u4")])
def test_shards_concatenate_to_the_stream_and_windows_cross_them(tmp_path, vocab, dtype):
    gen = torch.Generator().manual_seed(0)
    docs = [torch.randint(3, vocab, (int(n),), generator=gen).tolist()
            for n in torch.randint(1, 40, (50,), generator=gen)]
    tok = tmp_path / "spm.model"
    tok.write_bytes(b"a tokenizer")
    index = ts.write_store(iter(docs), vocab, tok, tmp_path / "s", shard_tokens=97)
    stream = token_stream(docs)
    assert index["dtype"] == dtype and index["tokens"] == len(stream) and index["docs"] == 50
    assert len(index["shards"]) == -(-len(stream) // 97) > 5
    store = ts.TokenStore(tmp_path / "s", tok)
    assert len(store) == len(stream)
    every = torch.arange(len(stream))
    assert torch.equal(store[every], stream) and store[every].dtype == torch.long
    a, b = BatchSampler(stream, 32, 8, 7), BatchSampler(store, 32, 8, 7)
    for _ in range(5):  # windows of 33 tokens over shards of 97: many cross a boundary
        assert torch.equal(a.next(), b.next())
    assert torch.equal(a.next()[4:8], b.next(rows=slice(4, 8)))
    store.verify()


def test_a_damaged_store_is_named_in_one_line(tmp_path):
    tok = tmp_path / "spm.model"
    tok.write_bytes(b"a tokenizer")
    ts.write_store(iter([[5, 6, 7]] * 20), 100, tok, tmp_path / "s", shard_tokens=16)
    shard = tmp_path / "s" / "shard-00001.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(DataError, match=r"shard-00001.bin: 30 bytes, the index says 16 tokens"):
        ts.TokenStore(tmp_path / "s", tok)
    other = tmp_path / "other.model"
    other.write_bytes(b"another tokenizer")
    with pytest.raises(DataError, match="encoded with another tokenizer"):
        ts.TokenStore(tmp_path / "s", other)
    (tmp_path / "s" / "index.json").write_text("{")
    with pytest.raises(DataError, match="index.json: unreadable token store index"):
        ts.TokenStore(tmp_path / "s")


def test_the_tokenizers_stage_stores_what_on_the_fly_encoding_gives(tokenized_root, tiny_cfg):
    """Every layout's store is the stream encoded now, id for id; runs read the store."""
    prepared, tok_root = tokenized_root / PREPARED, tokenized_root / TOKENIZERS
    trained = tiny_cfg.data.train_sources
    every = [(layout, n) for n in [s.name for s in tiny_cfg.data.sources]
             for layout in ("global",)] + \
        [(layout, n) for n in trained for layout in ("subvocab", "own")]
    for layout, name in every:
        tdir = tokenizer_dir(tok_root, layout, name)
        store = ts.TokenStore(ts.store_dir(tok_root, {"own": "spec_opt"}.get(layout, layout),
                                           name), tdir / "spm.model")
        stream = train_stream(tdir, prepared, name)
        assert torch.equal(store[torch.arange(len(store))], stream), (layout, name)
        want = "<u2" if store.index["vocab_size"] <= 1 << 16 else "<u4"
        assert store.maps[0].dtype == np.dtype(want)
    data = load_sources("subvocab", trained, prepared, tok_root, tiny_cfg.train.seq_len)
    assert all(isinstance(d.train, ts.TokenStore) for d in data.values())


def test_training_from_the_store_is_bit_identical_to_encoding_on_the_fly(
        tokenized_root, tiny_raw, tmp_path):
    from dept_core.config_io import validate
    from dept_core.run import train_variant

    raw = json.loads(json.dumps(tiny_raw))
    raw["train"].update(rounds=2, local_steps=3)
    cfg = validate(raw)
    copy = tmp_path / "proj"
    shutil.copytree(tokenized_root / TOKENIZERS, copy / TOKENIZERS)
    for store in (copy / TOKENIZERS).rglob("tokens"):
        shutil.rmtree(store)
    assert not list((copy / TOKENIZERS).rglob("index.json"))
    stored, _ = train_variant(cfg, "trim", tokenized_root / PREPARED,
                              tokenized_root / TOKENIZERS, None)
    encoded, _ = train_variant(cfg, "trim", tokenized_root / PREPARED, copy / TOKENIZERS, None)
    assert all(torch.equal(stored.body[k], encoded.body[k]) for k in stored.body)
    strip = [{k: v for k, v in r.items() if k not in ("seconds", "tokens_per_s")}
             for r in stored.metrics["history"]]
    assert strip == [{k: v for k, v in r.items() if k not in ("seconds", "tokens_per_s")}
                     for r in encoded.metrics["history"]]
