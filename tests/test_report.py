"""The comparison table on hand-built metrics."""

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
    s = report.summarise(metrics)
    assert s["mean_over"] == ["a"]
    assert s["variants"]["std"]["val_bpb_mean"] == 2.0
    assert s["variants"]["spec"]["improvement_over_std_pct"] == 50.0   # (2 - 1) / 2
    assert s["variants"]["spec"]["comm_bytes"] == 20
    assert s["best_mean"] == "spec" and s["best_per_source"] == {"a": "spec", "b": "std"}
    md = report.markdown(s)
    assert "| spec | 1.0000 | +50.0 % | 1.000 | — | — | — |" in md
    assert report.wide_csv(metrics, "val_bpb_mean").splitlines() == [
        "round,std,spec", "1,3.000000,1.000000"]
