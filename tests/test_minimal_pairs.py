"""Zero-shot minimal pairs: the items (token counts held equal, CJK by chunks) and the
scorer against log-likelihoods computed token by token."""

from __future__ import annotations

import pytest
import torch

from dept_core import minimal_pairs as mp


def test_units_are_words_or_cjk_chunks():
    assert mp.units_of("the cat sat") == (["the", "cat", "sat"], " ")
    units, sep = mp.units_of("データを 選択します")
    assert sep == "" and units == ["デー", "タを", "選択", "しま"]


def test_items_hold_token_counts_equal_under_every_reader(tokenized_root, tiny_cfg):
    from dept_core.data import read_split
    from dept_core.layout import PREPARED, TOKENIZERS

    for src in ("en", "ja", "es"):
        sps = mp.readers(tokenized_root / TOKENIZERS, src)
        assert len(sps) == (1 if src == "es" else 3)   # global (+ sub-vocabulary, own)
        texts = read_split(tokenized_root / PREPARED, src, "test")
        items = mp.build_items(texts, src, sps, 30, 8, 5, 4, 64, seed=0)
        assert len(items) >= 10
        assert items == mp.build_items(texts, src, sps, 30, 8, 5, 4, 64, seed=0)
        for it in items:
            assert len(set(it.choices)) == 4
            counts = {tuple(len(sp.encode(c)) for sp in sps) for c in it.choices}
            assert len(counts) == 1                    # length cannot decide
            real = it.choices[0]
            for wrong in it.choices[1:]:               # the same units, reordered
                assert sorted(wrong.replace(" ", "")) == sorted(real.replace(" ", ""))
                if src != "ja":
                    assert sorted(wrong.split()) == sorted(real.split())
            flat = " ".join(texts[it.doc].split())      # the real text is the document's
            assert real in (flat if src != "ja" else "".join(flat.split()))


def test_scorer_matches_log_likelihoods_by_hand(tokenized_root, tiny_cfg):
    from dept_core import continued as cp
    from dept_core import tokenizers as tk
    from dept_core.batches import EOS_ID
    from dept_core.layout import TOKENIZERS
    from dept_core.model import build_model, get_body

    sp = tk.load(tokenized_root / TOKENIZERS / "global" / "spm.model")
    vocab = sp.get_piece_size()
    model = cp.model_from(tiny_cfg, get_body(build_model(tiny_cfg.model, vocab, 3)),
                          cp.fresh_bank(tiny_cfg, vocab), torch.device("cpu")).eval()
    texts = ["the help page", "page the help", "Wählen Sie Format", "一 二 三 四 五"]
    got = mp.log_likelihoods(model, sp, texts, torch.device("cpu"), batch=3)
    for text, ll in zip(texts, got):
        ids = [EOS_ID, *sp.encode(text)]
        by_hand = 0.0
        with torch.no_grad():
            for i in range(1, len(ids)):               # one prefix at a time, no batching
                logits = model(input_ids=torch.tensor([ids[:i]])).logits[0, -1].double()
                by_hand += float(torch.log_softmax(logits, -1)[ids[i]])
        assert ll == pytest.approx(by_hand, abs=1e-4)
    items = [mp.Item("en", 0, tuple(texts[:2])), mp.Item("en", 1, tuple(texts[1::-1]))]
    want = [int(got[0] > got[1]), int(got[1] > got[0])]
    assert mp.score(model, sp, items, torch.device("cpu")) == want
    s = mp.summary({"en": want, "es": None}, 2)
    assert s["accuracy"] == pytest.approx(sum(want) / 2) and "es" not in \
        s["accuracy_per_source"] and s["chance"] == 0.5
