"""The comparison of variants: what was compared, pre-training, evaluation, verdict.

Inputs: each variant's pre-training `metrics.json` and evaluation `metrics.json`, per training
seed (`{variant: {seed: dict}}`), and the settings they were produced with. Bits per UTF-8 byte
is the headline number because it is comparable across tokenizers (SPEC-OPT has its own) and
so pairable per document; every mean is over the sources every variant has, and carries a 95 %
paired bootstrap interval (`dept_core.stats`). `report_eval` builds the evaluation tables,
`verdict` the sentences; this module assembles them and writes the Markdown, CSVs and plots.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from dept_core.metrics import mean
from dept_core.report_eval import (evaluation, evaluation_markdown, fmt,  # noqa: F401
                                   plasticity_csv, plot_evaluation)
from dept_core.variants import BASELINE, report_order
from dept_core.verdict import settings_line, verdict

ByVariant = dict[str, dict[int, dict]]  # variant -> seed -> metrics.json


def settings_of(cfg) -> dict:
    """What a comparison holds for: the budget, the model, the data, the options, the seeds."""
    t, dims = cfg.train, cfg.model.dims()
    n = len(cfg.data.train_sources)
    return {
        "sources": cfg.data.train_sources, "heldout": cfg.data.heldout_sources,
        "model": f"{cfg.model.family} d={dims['d_model']} × {dims['n_layers']} layers",
        "rounds": t.rounds, "local_steps": t.local_steps,
        "sources_per_round": t.sources_per_round, "batch_size": t.batch_size,
        "seq_len": t.seq_len, "schedule": t.schedule,
        "tokens_per_source": t.rounds * t.local_steps * t.batch_size * t.seq_len
        * t.sources_per_round // n,
        "lr": t.lr, "inner_state": t.inner_state, "round_warmup_steps": t.round_warmup_steps,
        "outer": f"{t.outer.optimizer} (lr {t.outer.server_lr:g}"
                 + (f", momentum {t.outer.momentum:g})" if t.outer.optimizer == "nesterov"
                    else ")"),
        "std_temperature": t.std_temperature, "seeds": t.seeds,
        "test_bytes_per_source": cfg.prepare.test_bytes,
    }


# ----------------------------------------------------------------------------- pre-training ----
def _final_val(by_seed: dict[int, dict]) -> dict[str, float]:
    """Per source: validation bits/byte at the last round, averaged over seeds."""
    srcs = set.intersection(*(set(m["final"]["val"]) for m in by_seed.values()))
    return {s: mean([m["final"]["val"][s]["bpb"] for m in by_seed.values()]) for s in srcs}


def pretraining(metrics: ByVariant) -> dict:
    variants = report_order(set(metrics))
    finals = {v: _final_val(metrics[v]) for v in variants}
    common = sorted(set.intersection(*(set(f) for f in finals.values())))
    rows = {}
    for v in variants:
        m0 = metrics[v][min(metrics[v])]
        emb = m0["memory"]["embedding_bytes"]
        rows[v] = {
            "val_bpb_mean": mean([finals[v][s] for s in common]) if common else None,
            "val_bpb": finals[v],
            "participation": m0.get("participation", {}),
            "comm_bytes": m0["comm"]["bytes_down_total"] + m0["comm"]["bytes_up_total"],
            "embedding_bytes_per_source": sum(emb.values()) / max(len(emb), 1),
            "body_bytes": m0["memory"]["body_bytes"],
        }
    return {"variants": rows, "mean_over": common,
            "sources": sorted({s for f in finals.values() for s in f}),
            "curves": curves(metrics)}


def curves(metrics: ByVariant) -> dict[str, list[dict]]:
    """Per variant and round: mean validation bits/byte (over seeds and over the sources
    every variant evaluated at that round) and cumulative communication."""
    variants = list(metrics)
    rounds = sorted({r["round"] for v in variants for m in metrics[v].values()
                     for r in m["history"] if r.get("val")})
    out: dict[str, list[dict]] = {v: [] for v in variants}
    for rnd in rounds:
        recs = {v: [r for m in metrics[v].values() for r in m["history"] if r["round"] == rnd]
                for v in variants}
        if not all(recs.values()):
            continue
        # sorted: a fixed summation order, so the same report bit for bit in every process
        common = sorted(set.intersection(*(set(r.get("val", {})) for rs in recs.values()
                                           for r in rs)))
        for v in variants:
            m0 = metrics[v][min(metrics[v])]
            comm = sum(r["comm"]["down"] + r["comm"]["up"] for r in m0["history"]
                       if r["round"] <= rnd)
            bpb = mean([mean([r["val"][s]["bpb"] for s in common]) for r in recs[v]]) \
                if common else None
            out[v].append({"round": rnd, "val_bpb_mean": bpb, "n_sources": len(common),
                           "cumulative_comm_bytes": comm})
    return out


# -------------------------------------------------------------------------------- summary ----
def comparison(metrics: ByVariant, evals: ByVariant | None = None,
               settings: dict | None = None, n_boot: int = 2000) -> dict:
    """The whole comparison as a JSON-able dict (results/compare/summary.json)."""
    out = {"settings": settings or {}, "pretraining": pretraining(metrics),
           "seeds": sorted({s for by_seed in metrics.values() for s in by_seed})}
    if evals:
        out["evaluation"] = evaluation(evals, out["pretraining"]["variants"], n_boot)
    out["verdict"] = verdict(out)
    return out


def markdown(summary: dict) -> str:
    pre = summary["pretraining"]
    lines = ["# DEPT comparison", ""]
    if summary.get("settings"):
        lines += [f"Settings: {settings_line(summary['settings'])}.", ""]
    lines += ["## Verdict", "", *[f"- {s}" for s in summary["verdict"]], ""]
    if "evaluation" in summary:
        lines += [*evaluation_markdown(summary), ""]
    srcs = pre["sources"]
    lines += ["## Pre-training: validation bits/byte at the last round", ""]
    head = ["variant", "mean bits/byte", "vs STD", *srcs, "rounds trained per source",
            "comm MB", "emb. MB/source"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    std = pre["variants"].get(BASELINE, {}).get("val_bpb_mean")
    for v, r in pre["variants"].items():
        part = r["participation"]
        counts = sorted(set(part.values()))
        cells = [v, fmt(r["val_bpb_mean"], ".4f"),
                 fmt(100 * (std - r["val_bpb_mean"]) / std if std and r["val_bpb_mean"]
                     else None, "+.1f"),
                 *[fmt(r["val_bpb"].get(s)) for s in srcs],
                 "/".join(str(c) for c in counts) if counts else "—",
                 f"{r['comm_bytes'] / 1e6:.1f}", f"{r['embedding_bytes_per_source'] / 1e6:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Means over {', '.join(pre['mean_over'])} (every variant has them), "
              "averaged over seeds; validation split (used for tuning, so no interval is "
              "claimed here: the test tables above carry them). 'rounds trained per source': "
              "the distinct participation counts (one number = every source trained equally). "
              "Communication counts every byte between sources and server (STD: the "
              "equivalent data-parallel all-reduce)."]
    return "\n".join(lines) + "\n"


def curves_csv(metrics: ByVariant) -> str:
    """round, variant, val_bpb_mean, cumulative_comm_bytes — one row per variant and round."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["round", "variant", "val_bpb_mean", "cumulative_comm_bytes"])
    for v, pts in curves(metrics).items():
        for p in pts:
            if p["val_bpb_mean"] is not None:
                w.writerow([p["round"], v, f"{p['val_bpb_mean']:.6f}",
                            p["cumulative_comm_bytes"]])
    return buf.getvalue()


def long_csv(metrics: ByVariant, column: str) -> str:
    """round, variant, value: one row per variant and round (DVC plots colours by variant
    with the template .dvc/plots/by_variant.json, so dvc.yaml names no variant)."""
    rows = list(csv.DictReader(io.StringIO(curves_csv(metrics))))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["round", "variant", "value"])
    for r in rows:
        w.writerow([r["round"], r["variant"], r[column]])
    return buf.getvalue()


def plot(metrics: ByVariant, out_dir: Path) -> list[Path]:
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
            if pts:
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
