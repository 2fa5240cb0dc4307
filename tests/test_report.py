"""The comparison table on hand-built metrics."""

import pytest

from dept_core import report


def _m(val, comm, emb):
    return {"final": {"val": {k: {"bpb": v} for k, v in val.items()}, "val_bpb_mean": None},
            "comm": {"bytes_down_total": comm, "bytes_up_total": comm},
            "memory": {"embedding_bytes": emb, "body_bytes": 10},
            "history": [{"round": 1, "comm": {"down": comm, "up": comm},
                         "val": {k: {"bpb": v} for k, v in val.items()}}]}


def test_summary_compares_like_with_like_and_names_winners():
    metrics = {"std": _m({"a": 2.0, "b": 4.0}, 100, {"a": 8, "b": 8}),
               "spec": _m({"a": 1.0}, 10, {"a": 2})}          # b never sampled
    s = report.comparison(metrics)
    assert s["mean_over"] == ["a"]
    assert s["variants"]["std"]["val_bpb_mean"] == 2.0
    assert s["variants"]["spec"]["improvement_over_std_pct"] == 50.0   # (2 - 1) / 2
    assert s["variants"]["spec"]["comm_bytes"] == 20
    assert s["best_mean"] == "spec" and s["best_per_source"] == {"a": "spec", "b": "std"}
    md = report.markdown(s)
    assert "| spec | 1.0000 | +50.0 % | 1.000 | — | — | — |" in md
    assert report.long_csv(metrics, "val_bpb_mean").splitlines() == [
        "round,variant,value", "1,std,3.000000", "1,spec,1.000000"]


def _sec(ind, ood):
    from dept_core.continued import with_means

    return with_means({k: {"bpb": v, "ppl": 2 ** v} for k, v in ind.items()},
                      {k: {"bpb": v, "ppl": 2 ** v} for k, v in ood.items()})


def _ev(fresh_id, fresh_ood, curve, acc, f1):
    return {"continued": {"fresh": _sec(fresh_id, fresh_ood)},
            "plasticity": {"curves": {"es": [{"step": s, "bpb": b} for s, b in curve]}},
            "downstream": {"accuracy": acc, "macro_f1": f1, "majority_class_accuracy": 0.2,
                           "accuracy_per_language": {}},
            "unigram": {"a": {"unigram_bpb": 5.0}}}


def test_evaluation_tables_verdict_and_plasticity_by_hand():
    metrics = {"std": _m({"a": 2.0}, 100, {"a": 8}), "spec": _m({"a": 1.0}, 10, {"a": 2})}
    evals = {"std": _ev({"a": 2.0}, {"es": 4.0}, [(0, 8.0), (10, 4.0)], 0.5, 0.4),
             "spec": _ev({"a": 1.5}, {"es": 5.0}, [(0, 8.0), (10, 2.0)], 0.6, 0.5),
             "random": _ev({"a": 3.0}, {"es": 6.0}, [(0, 8.0), (10, 6.0)], 0.3, 0.2)}
    s = report.comparison(metrics, evals)
    t = s["evaluation"]["tables"]["cpt_fresh"]
    assert t["spec"]["id_bpb_mean_vs_std_pct"] == 25.0        # (2 - 1.5) / 2
    assert t["spec"]["ood_bpb_mean_vs_std_pct"] == -25.0      # (4 - 5) / 4
    p = s["evaluation"]["plasticity"]
    assert p["spec"]["auc_bpb_mean"] == 5.0 and p["std"]["auc_bpb_mean"] == 6.0  # (8+2)/2
    d = s["evaluation"]["downstream"]
    assert d["spec"]["accuracy_vs_random"] == pytest.approx(0.3)
    assert d["std"]["macro_f1_vs_random"] == pytest.approx(0.2)
    verdict = "\n".join(s["verdict"])
    assert "in distribution, CPT, fresh global embedding: lowest is **spec** (1.500), " \
           "+25.0 % vs STD" in verdict
    assert "out of distribution, CPT, fresh global embedding: lowest is **std** (4.000); " \
           "the best DEPT variant, spec, is 25.0 % worse" in verdict
    assert "most plastic body is **spec** (5.000); the untrained body scores 7.000" in verdict
    assert "best is **spec** (accuracy 0.600" in verdict and "2 of 2 pre-trained" in verdict
    assert report.plasticity_csv(s).splitlines() == [
        "step,variant,value", "0,std,8.000000", "10,std,4.000000", "0,spec,8.000000",
        "10,spec,2.000000", "0,random,8.000000", "10,random,6.000000"]
    md = report.markdown(s)
    assert "| spec | CPT, fresh global embedding | 1.500 | **1.500** | +25.0 |" in md
    assert "| unigram | yardstick" in md and "## Verdict" in md
