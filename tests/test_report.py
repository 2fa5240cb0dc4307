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


TASK = {"labels": ["x", "y"], "train_langs": ["a"], "n_train": 8, "n_val": 4, "n_test": 6,
        "test_langs": ["a", "a", "a", "a", "es", "es"]}
CEILINGS = {"majority": {"label": "x", "accuracy": 0.5, "correct": [1, 0, 1, 0, 0, 0]},
            "bag_of_words": {"alpha": 0.1, "accuracy": 0.75, "correct": [1, 1, 1, 0, 1, 0]}}


def _ds(correct):
    head = [c for c, lang in zip(correct, TASK["test_langs"]) if lang == "a"]
    return {"correct": correct, "accuracy": sum(head) / len(head), "macro_f1": 0.5,
            "accuracy_per_language": {}, "choice": {"lr": 0.001, "steps": 10}}


def _ev(a_bits, es_bits, curve, correct, zs=None, probe_bits=None):
    sec = _sec({"a": a_bits}, BYTES, {"es": es_bits})
    out = {"as_trained": _sec({"a": a_bits}, BYTES), "continued": {"fresh": sec},
           "unigram": UNIGRAM,
           "plasticity": {"curves": {"es": [
               {"step": st, "bpb": b, "docs": {"loss": [b * 10 * LN2] * 2, "bytes": [10, 10]}}
               for st, b in curve]}},
           "downstream": {"task": TASK, "ceilings": CEILINGS,
                          "after_cpt": _ds(correct + [1, 0])}}
    if zs is not None:
        out["zero_shot"] = {"items": {"a": 4, "es": 2}, "choices": 4,
                            "as_trained": {"correct": zs, "accuracy_per_source": {
                                k: sum(v) / len(v) for k, v in zs.items() if v}}}
    if probe_bits is not None:
        out["probe"] = {**_sec({"a": probe_bits}, BYTES, {"es": es_bits}), "lr": 0.01,
                        "val_bpb": {"0.003": 3.0, "0.01": 2.0, "0.03": 2.5},
                        "at_grid_edge": False}
        out["continued"]["fresh"]["curve"] = [
            {"step": st, "val": _sec({"a": [b + probe_bits[0] for b in (0, 0, 0, 0)]},
                                     BYTES)["in_distribution"]} for st, b in ((5, 0), (10, 0))]
    return out


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
    d = s["evaluation"]["downstream"]["protocols"]["after_cpt"]
    assert d["spec"]["accuracy"]["value"] == 0.75 and d["random"]["accuracy"]["value"] == 0.25
    assert d["bag_of_words"]["accuracy"]["value"] == 0.75 and d["majority"]["n"] == 4
    assert d["spec"]["vs_untrained"]["value"] == pytest.approx(0.5)
    assert d["spec"]["heldout_accuracy"] == 0.5 and d["majority"]["heldout_accuracy"] == 0.0
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


def test_body_level_tables_floors_ceilings_and_verdict_by_hand():
    """The probe table, the CPT curve, downstream and zero-shot rows, on hand-built numbers:
    means over what every row reads, paired differences, and the verdict's sentences."""
    metrics = {v: {0: _m({"a": 2.0}, 10, {"a": 2})} for v in ("std", "spec")}
    evals = {
        "std": {0: _ev([40] * 4, [60, 60], [(0, 8.0), (10, 4.0)], [1, 0, 1, 0],
                       zs={"a": [1, 0, 1, 0], "es": [1, 1]}, probe_bits=[38] * 4)},
        "spec": {0: _ev([36] * 4, [54, 54], [(0, 8.0), (10, 2.0)], [1, 1, 1, 0],
                        zs={"a": [1, 1, 1, 1], "es": None}, probe_bits=[36] * 4)},
        "random": {0: _ev([40] * 4, [60, 60], [(0, 8.0), (10, 6.0)], [0, 0, 1, 0],
                          zs={"a": [0, 0, 0, 0], "es": [0, 0]}, probe_bits=[40] * 4)},
    }
    s = report.comparison(metrics, evals, n_boot=300)
    ev = s["evaluation"]
    probe = ev["tables"]["probe"]
    assert probe["std"]["id"]["mean"]["value"] == pytest.approx(3.8)
    assert probe["spec"]["id"]["vs_untrained"]["value"] == pytest.approx(0.4)
    assert probe["spec"]["id"]["vs_untrained"]["verdict"] == "better"
    assert probe["spec"]["id"]["verdict"] == "better"                # vs STD
    assert ev["probe_choices"]["spec"] == {"lr": [0.01], "grid": [0.003, 0.01, 0.03],
                                           "at_grid_edge": False}
    # zero-shot: spec reads no held-out source as trained -> every row on the 4 items of a
    z = ev["zero_shot"]["protocols"]["as_trained"]
    assert z["sources"] == ["a"] and z["rows"]["std"]["n"] == 4
    assert z["rows"]["spec"]["accuracy"]["value"] == 1.0
    assert z["rows"]["std"]["accuracy"]["value"] == 0.5
    assert z["rows"]["spec"]["vs_untrained"] == {"value": 1.0, "low": 1.0, "high": 1.0,
                                                "verdict": "better"}
    assert z["rows"]["spec"]["vs_std"]["value"] == pytest.approx(0.5)
    curve = ev["cpt_curve"]
    assert curve["steps"] == [5, 10]
    assert curve["variants"]["spec"][-1]["vs_untrained"]["value"] == pytest.approx(0.4)
    text = "\n".join(s["verdict"])
    assert "Frozen-body probe (test bits/byte in distribution; only a fresh embedding " \
           "trains): 2 of 2 pre-trained bodies beat the untrained body" in text
    assert "every chosen rate lies inside its grid" in text
    assert "best body spec 0.750 = 100% of the bag-of-words ceiling 0.750" in text
    md = report.markdown(s)
    assert "| ceiling | bag of words (char n-grams) | 0.750 [" in md
    assert "## Zero-shot minimal pairs" in md and "| chance | — | 0.250 |" in md
    assert "## CPT (fresh global embedding, whole model)" in md
