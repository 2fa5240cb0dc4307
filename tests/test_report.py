"""The comparison on hand-built metrics and per-document losses (dept_core.report)."""

from __future__ import annotations

import math

import pytest

from dept_core import report

LN2 = math.log(2)


def _m(val: dict, comm: int, emb: dict, participation: dict | None = None,
       history_val: list[dict] | None = None) -> dict:
    """A pre-training metrics.json: `val` = final per-source bits/byte."""
    vals = history_val or [val]
    return {"final": {"val": {k: {"bpb": v} for k, v in val.items()}},
            "comm": {"bytes_down_total": comm, "bytes_up_total": comm},
            "memory": {"embedding_bytes": emb, "body_bytes": 10},
            "participation": participation or {k: 1 for k in val},
            "history": [{"round": i + 1, "comm": {"down": comm, "up": comm},
                         "val": {k: {"bpb": b} for k, b in v.items()}}
                        for i, v in enumerate(vals)]}


def test_pretraining_means_over_common_sources_with_participation_and_common_curves():
    metrics = {"std": {0: _m({"a": 2.0, "b": 4.0}, 100, {"a": 8, "b": 8},
                             history_val=[{"a": 3.0, "b": 5.0}, {"a": 2.0, "b": 4.0}])},
               "spec": {0: _m({"a": 1.0}, 10, {"a": 2}, {"a": 2, "b": 0},
                              history_val=[{"a": 1.5}, {"a": 1.0}])}}   # b never trained
    s = report.comparison(metrics)
    pre = s["pretraining"]
    assert pre["mean_over"] == ["a"]
    assert pre["variants"]["std"]["val_bpb_mean"] == 2.0
    assert pre["variants"]["spec"]["participation"] == {"a": 2, "b": 0}
    # curves average only the sources every variant has at that round: a
    assert [p["val_bpb_mean"] for p in pre["curves"]["std"]] == [3.0, 2.0]
    assert [p["val_bpb_mean"] for p in pre["curves"]["spec"]] == [1.5, 1.0]
    md = report.markdown(s)
    assert "| spec | 1.0000 | +50.0 | 1.000 | — | 0/2 | 0.0 | 0.00 |" in md
    assert report.long_csv(metrics, "val_bpb_mean").splitlines() == [
        "round,variant,value", "1,std,3.000000", "2,std,2.000000", "1,spec,1.500000",
        "2,spec,1.000000"]


def _sec(docs_by_source: dict[str, list[float]], doc_bytes: dict[str, list[int]], ood=None):
    """An evaluation section: per source, per-document losses given in BITS (as nats)."""
    def entry(src, bits):
        loss = [b * LN2 for b in bits]
        return {"bpb": sum(bits) / sum(doc_bytes[src]), "ppl": 2.0, "docs": {
            "loss": loss, "bytes": doc_bytes[src], "tokens": [1] * len(bits)}}
    return {"in_distribution": {k: entry(k, v) for k, v in docs_by_source.items()},
            "out_of_distribution": {k: entry(k, v) for k, v in (ood or {}).items()}}


BYTES = {"a": [10, 10, 10, 10], "es": [10, 10]}
UNIGRAM = {"a": {"test_bpb": 5.0, "docs": {"loss": [50 * LN2] * 4, "bytes": BYTES["a"]}},
           "es": {"test_bpb": 6.0, "docs": {"loss": [60 * LN2] * 2, "bytes": BYTES["es"]}}}


def _ev(a_bits, es_bits, curve, correct):
    sec = _sec({"a": a_bits}, BYTES, {"es": es_bits})
    return {"as_trained": _sec({"a": a_bits}, BYTES), "continued": {"fresh": sec},
            "unigram": UNIGRAM,
            "plasticity": {"curves": {"es": [
                {"step": st, "bpb": b, "docs": {"loss": [b * 10 * LN2] * 2, "bytes": [10, 10]}}
                for st, b in curve]}},
            "downstream": {"correct": correct, "macro_f1": 0.5, "majority_class_accuracy": 0.25,
                           "accuracy_per_language": {}}}


def test_evaluation_intervals_verdicts_unigram_and_cpt_check():
    metrics = {v: {0: _m({"a": 2.0}, 10, {"a": 2})} for v in ("std", "spec", "glob")}
    evals = {
        # spec: 10 % lower than STD on every document -> +10 % with a degenerate interval
        "std": {0: _ev([40, 40, 40, 40], [60, 60], [(0, 8.0), (10, 4.0)], [1, 0, 1, 0])},
        "spec": {0: _ev([36, 36, 36, 36], [54, 54], [(0, 8.0), (10, 2.0)], [1, 1, 1, 0])},
        # glob: ±1 bit around STD, document by document -> not distinguishable
        "glob": {0: _ev([41, 39, 41, 39], [61, 59], [(0, 8.0), (10, 4.0)], [1, 0, 1, 0])},
        "random": {0: _ev([40, 40, 40, 40], [60, 60], [(0, 8.0), (10, 6.0)], [0, 0, 1, 0])},
    }
    settings = {"sources": ["a"], "heldout": ["es"], "model": "llama d=8 × 1 layers",
                "rounds": 2, "local_steps": 3, "sources_per_round": 1, "batch_size": 2,
                "seq_len": 4, "schedule": "balanced", "tokens_per_source": 48, "lr": 0.01,
                "inner_state": "keep", "round_warmup_steps": 0, "outer": "avg (lr 1)",
                "std_temperature": 0.0, "seeds": [0], "test_bytes_per_source": 40}
    s = report.comparison(metrics, evals, settings, n_boot=400)
    t = s["evaluation"]["tables"]["cpt_fresh"]
    assert t["spec"]["id"]["vs_std_pct"] == {"value": pytest.approx(10.0),
                                             "low": pytest.approx(10.0),
                                             "high": pytest.approx(10.0)}
    assert t["spec"]["id"]["verdict"] == "better" and t["spec"]["ood"]["verdict"] == "better"
    assert t["glob"]["id"]["verdict"] == "not distinguishable"
    assert t["glob"]["id"]["vs_std_pct"]["low"] < 0 < t["glob"]["id"]["vs_std_pct"]["high"]
    # std (4 bits/byte) ÷ unigram (5 bits/byte) on the same documents
    assert t["std"]["id"]["unigram_ratio"]["value"] == pytest.approx(0.8)
    # random scores exactly STD: STD's body does not beat the untrained one; spec's does
    assert t["std"]["id"]["beats_untrained"] is False and t["spec"]["id"]["beats_untrained"]
    assert s["evaluation"]["cpt_check"]["bodies_beating_untrained"] == ["spec"]
    p = s["evaluation"]["plasticity"]
    assert p["spec"]["auc"]["value"] == pytest.approx(5.0)     # (8 + 2) / 2
    assert p["spec"]["verdict"] == "better" and p["std"]["verdict"] == "better"
    d = s["evaluation"]["downstream"]
    assert d["spec"]["accuracy"]["value"] == 0.75 and d["random"]["accuracy"]["value"] == 0.25
    text = "\n".join(s["verdict"])
    assert text.startswith("These numbers hold for: llama d=8 × 1 layers; 2 rounds × 3 local")
    assert "spec +10.0 % [+10.0, +10.0] better" in text
    assert "glob" in text and "not distinguishable" in text
    assert "1 of 3 pre-trained bodies beat the untrained body beyond the interval (spec)" in text
    md = report.markdown(s)
    assert "| spec | CPT, fresh global embedding | 3.600 [3.600, 3.600] | +10.0 [+10.0, " \
           "+10.0] better |" in md
    assert "| unigram | 5.000 |" in md


def test_cpt_too_short_when_no_body_beats_the_untrained_one():
    metrics = {v: {0: _m({"a": 2.0}, 10, {"a": 2})} for v in ("std", "spec")}
    same = _ev([40, 40, 40, 40], [60, 60], [(0, 8.0), (10, 4.0)], [1, 0, 1, 0])
    evals = {"std": {0: same}, "spec": {0: same}, "random": {0: same}}
    s = report.comparison(metrics, evals, n_boot=200)
    assert s["evaluation"]["cpt_check"]["bodies_beating_untrained"] == []
    assert any("too short to rank bodies" in line for line in s["verdict"])
    assert all(r["id"]["verdict"] == "not distinguishable"
               for v, r in s["evaluation"]["tables"]["cpt_fresh"].items() if v == "spec")


def test_documents_must_be_the_same_for_every_variant():
    metrics = {v: {0: _m({"a": 2.0}, 10, {"a": 2})} for v in ("std", "spec")}
    a = _ev([40, 40, 40, 40], [60, 60], [(0, 8.0), (10, 4.0)], [1, 0, 1, 0])
    b = _ev([40, 40, 40, 40], [60, 60], [(0, 8.0), (10, 4.0)], [1, 0, 1, 0])
    b["as_trained"]["in_distribution"]["a"]["docs"]["bytes"] = [10, 10, 10, 11]
    with pytest.raises(ValueError, match="spec .seed 0. was scored on other a test documents"):
        report.comparison(metrics, {"std": {0: a}, "spec": {0: b}}, n_boot=100)
