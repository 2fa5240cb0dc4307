"""The comparison of variants: a summary table (JSON + Markdown) and per-round curves.

Input: each variant's `metrics.json` (written by the pretrain stage). Bits per UTF-8 byte is
the headline number because it is comparable across tokenizers (SPEC-OPT has its own).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from dept_core.metrics import improvement_pct
# The evaluation half of the report (tables, verdict, plasticity CSV, plots):
from dept_core.report_eval import (evaluation, evaluation_markdown,  # noqa: F401
                                   plasticity_csv, plot_evaluation, verdict)
from dept_core.variants import BASELINE, report_order


def _bpb(val: dict) -> dict[str, float]:
    return {k: v["bpb"] for k, v in val.items()}


def comparison(metrics: dict[str, dict], evals: dict[str, dict] | None = None) -> dict:
    """Per variant: mean and per-source validation bits/byte, improvement over STD,
    communication bytes and embedding memory; with `evals` (results/evaluate/*), the test,
    continued pre-training, plasticity and downstream tables and a verdict."""
    tests = {v: e.get("as_trained", {}) for v, e in (evals or {}).items()}
    variants = report_order(set(metrics))
    # Means over the sources every variant evaluated (a SPEC source never sampled has no
    # embeddings and so no evaluation), so that the means compare like with like.
    common = set.intersection(*(set(metrics[v]["final"]["val"]) for v in variants))

    def mean_of(v: str) -> float | None:
        val = metrics[v]["final"]["val"]
        return sum(val[s]["bpb"] for s in common) / len(common) if common else None

    std = mean_of(BASELINE) if BASELINE in metrics else None
    rows = {}
    for v in variants:
        m = metrics[v]
        mean = mean_of(v)
        emb = m["memory"]["embedding_bytes"]
        rows[v] = {
            "val_bpb_mean": mean,
            "val_bpb": _bpb(m["final"]["val"]),
            "improvement_over_std_pct": improvement_pct(std, mean) if std and mean else None,
            "comm_bytes": m["comm"]["bytes_down_total"] + m["comm"]["bytes_up_total"],
            "embedding_bytes_per_source": sum(emb.values()) / max(len(emb), 1),
            "body_bytes": m["memory"]["body_bytes"],
            "test_bpb_in_distribution": (tests or {}).get(v, {}).get(
                "in_distribution_bpb_mean"),
            "test_bpb_out_of_distribution": (tests or {}).get(v, {}).get(
                "out_of_distribution_bpb_mean"),
        }
    best = min((r["val_bpb_mean"], v) for v, r in rows.items() if r["val_bpb_mean"])[1]
    sources = sorted({s for r in rows.values() for s in r["val_bpb"]})
    winners = {s: min((r["val_bpb"].get(s, float("inf")), v) for v, r in rows.items())[1]
               for s in sources}
    out = {"variants": rows, "best_mean": best, "best_per_source": winners,
           "sources": sources, "mean_over": sorted(common)}
    if evals:
        out["evaluation"] = evaluation(evals, rows)
        out["verdict"] = verdict(out)
    return out


def markdown(summary: dict) -> str:
    srcs = summary["sources"]
    head = ["variant", "mean bits/byte", "vs STD", *srcs, "test ID", "test OOD", "comm MB",
            "emb. MB/source"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v, r in summary["variants"].items():
        imp = r["improvement_over_std_pct"]
        cells = [v, f"{r['val_bpb_mean']:.4f}", "—" if imp is None else f"{imp:+.1f} %",
                 *[f"{r['val_bpb'][s]:.3f}" if s in r["val_bpb"] else "—" for s in srcs],
                 *[f"{r[k]:.3f}" if r.get(k) is not None else "—"
                   for k in ("test_bpb_in_distribution", "test_bpb_out_of_distribution")],
                 f"{r['comm_bytes'] / 1e6:.1f}", f"{r['embedding_bytes_per_source'] / 1e6:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    wins = ", ".join(f"{s}: {v}" for s, v in summary["best_per_source"].items())
    lines[:0] = ["## Pre-training: validation bits/byte at the last round", ""]
    lines += ["", f"Means over {', '.join(summary['mean_over'])} (evaluated by every variant). "
              f"Lowest mean validation bits/byte: **{summary['best_mean']}**. "
              f"Best per source: {wins}.",
              "Columns per source: validation bits/byte at the last round. Test ID/OOD: mean "
              "test-split bits/byte of the exported models, in distribution and on the held-out "
              "sources (global model only: SPEC/SPEC-OPT have none). "
              "Bits per UTF-8 byte is comparable across tokenizers; lower is better. "
              "Communication counts every byte sent between sources and server (STD: the "
              "equivalent data-parallel all-reduce)."]
    if "evaluation" in summary:
        lines += ["", *evaluation_markdown(summary)]
    return "\n".join(lines) + "\n"


def curves_csv(metrics: dict[str, dict]) -> str:
    """round, variant, val_bpb_mean, cumulative_comm_bytes — one row per variant and round."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["round", "variant", "val_bpb_mean", "cumulative_comm_bytes"])
    for v, m in metrics.items():
        total = 0
        for r in m["history"]:
            total += r["comm"]["down"] + r["comm"]["up"]
            if r.get("val"):
                mean = sum(x["bpb"] for x in r["val"].values()) / len(r["val"])
                w.writerow([r["round"], v, f"{mean:.6f}", total])
    return buf.getvalue()


def long_csv(metrics: dict[str, dict], column: str) -> str:
    """round, variant, value: one row per variant and round (DVC plots colours by variant
    with the template .dvc/plots/by_variant.json, so dvc.yaml names no variant)."""
    rows = list(csv.DictReader(io.StringIO(curves_csv(metrics))))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["round", "variant", "value"])
    for r in rows:
        w.writerow([r["round"], r["variant"], r[column]])
    return buf.getvalue()


def plot(metrics: dict[str, dict], out_dir: Path) -> list[Path]:
    """PNG plots: validation bits/byte per round, and against cumulative communication."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(io.StringIO(curves_csv(metrics))))
    paths = []
    for x, name, label in [("round", "bpb_per_round.png", "round"),
                           ("cumulative_comm_bytes", "bpb_vs_comm.png",
                            "cumulative communication (bytes)")]:
        fig, ax = plt.subplots(figsize=(6, 4))
        for v in metrics:
            pts = [(float(r[x]), float(r["val_bpb_mean"])) for r in rows if r["variant"] == v]
            ax.plot(*zip(*pts), marker="o", label=v)
        if x != "round":
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("validation bits per byte (mean over sources)")
        ax.legend()
        fig.tight_layout()
        path = Path(out_dir) / name
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
