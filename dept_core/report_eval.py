"""The evaluation part of the comparison (results/evaluate/<variant>/seed-<s>/): test tables
with paired intervals per protocol, the unigram yardstick, whether CPT can rank bodies,
plasticity and downstream, the plasticity CSV and the evaluation plots.

Every number comes with a 95 % paired bootstrap interval (`dept_core.stats`): test documents
(and seeds) are resampled once per replicate and every variant — the untrained reference and
the unigram yardstick included — is re-scored on the same resample.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from dept_core import report_body
from dept_core.metrics import mean
from dept_core.stats import (Interval, PairedBootstrap, curve_auc_bootstrap,
                             percentile_interval, standard_error_pct, verdict_word)
from dept_core.variants import BASELINE, REFERENCE, report_order

PROTOCOLS = {"as_trained": "as trained (own embeddings)",
             "cpt_fresh": "CPT, fresh global embedding",
             "cpt_pretrained": "CPT, pre-trained global embedding",
             "probe": "frozen-body probe (only a fresh global embedding trains)"}
DISTS = {"id": "in_distribution", "ood": "out_of_distribution"}
ByVariant = dict[str, dict[int, dict]]


def fmt(x, spec: str = ".3f", dash: str = "—") -> str:
    return dash if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def fmt_iv(iv: dict | None, spec: str = ".3f", unit: str = "") -> str:
    """`value [low, high]`."""
    if not iv:
        return "—"
    return f"{format(iv['value'], spec)}{unit} [{format(iv['low'], spec)}, " \
           f"{format(iv['high'], spec)}]"


def _section(e: dict, proto: str) -> dict | None:
    if proto in ("as_trained", "probe"):
        return e.get(proto)
    return e.get("continued", {}).get(proto.removeprefix("cpt_"))


def _common_seeds(evals: ByVariant) -> list[int]:
    return sorted(set.intersection(*(set(by_seed) for by_seed in evals.values())))


def _paired_docs(evals: ByVariant, proto: str, dist: str, seeds: list[int]):
    """Per-document losses of every variant that has this protocol, on the sources all of
    them have; the documents' bytes (checked identical across variants: same documents)."""
    have = {v: {s: _section(evals[v][s], proto) for s in seeds} for v in evals}
    # variants with this protocol and distribution (SPEC has no global model: no OOD as trained)
    have = {v: secs for v, secs in have.items()
            if all(sec and sec[DISTS[dist]] for sec in secs.values())}
    if not have:
        return {}, {}, []
    sources = sorted(set.intersection(*(set(sec[DISTS[dist]]) for secs in have.values()
                                        for sec in secs.values())))
    losses, doc_bytes = {}, {}
    for v, secs in have.items():
        losses[v] = {}
        for s, sec in secs.items():
            losses[v][s] = {}
            for src in sources:
                docs = sec[DISTS[dist]][src]["docs"]
                losses[v][s][src] = np.asarray(docs["loss"], dtype=np.float64)
                b = np.asarray(docs["bytes"], dtype=np.float64)
                if src in doc_bytes and not np.array_equal(doc_bytes[src], b):
                    raise ValueError(f"{v} (seed {s}) was scored on other {src} test documents "
                                     f"than the other variants: re-run its evaluation")
                doc_bytes[src] = b
    return losses, doc_bytes, sources


def _table(evals: ByVariant, proto: str, unigram: dict, n_boot: int) -> dict:
    seeds = _common_seeds(evals)
    rows: dict[str, dict] = {}
    for dist in DISTS:
        losses, doc_bytes, sources = _paired_docs(evals, proto, dist, seeds)
        if not sources:
            continue
        ref = {s: np.asarray(unigram[s]["docs"]["loss"]) for s in sources} \
            if all(s in unigram for s in sources) else None
        boot = PairedBootstrap(losses, doc_bytes, sources, n_boot, reference=ref)
        for v in report_order(set(losses)):
            row = rows.setdefault(v, {"bpb": {}, "ppl": {}, "se_pct": {}})
            cell = {"mean": boot.mean(v).as_dict(), "sources": sources}
            if BASELINE in losses and v != BASELINE:
                iv = boot.pct_vs(v, BASELINE)
                cell.update(vs_std_pct=iv.as_dict(), verdict=verdict_word(iv))
            if REFERENCE in losses and v != REFERENCE:
                iv = boot.diff(v, REFERENCE)  # untrained − v: > 0 means v's body helps
                cell.update(vs_untrained={**iv.as_dict(), "verdict": verdict_word(iv)},
                            beats_untrained=iv.low > 0)
            if ref is not None:
                cell["unigram_ratio"] = boot.ratio_to_reference(v).as_dict()
            row[dist] = cell
            for src in sources:
                per_seed = [_section(evals[v][s], proto)[DISTS[dist]][src] for s in seeds]
                row["bpb"][src] = mean([m["bpb"] for m in per_seed])
                row["ppl"][src] = mean([m["ppl"] for m in per_seed])
                row["se_pct"][src] = standard_error_pct(losses[v][seeds[0]][src],
                                                        doc_bytes[src], n_boot)
    return rows


def _plasticity(evals: ByVariant, n_boot: int) -> dict:
    have = {v: by_seed for v, by_seed in evals.items()
            if all(e.get("plasticity", {}).get("curves") for e in by_seed.values())}
    if not have:
        return {}
    curves = {v: {s: {src: {"steps": [p["step"] for p in c],
                            "loss": [p["docs"]["loss"] for p in c],
                            "bytes": c[0]["docs"]["bytes"]}
                      for src, c in e["plasticity"]["curves"].items()}
                  for s, e in by_seed.items()} for v, by_seed in have.items()}
    point, reps = curve_auc_bootstrap(curves, n_boot)
    out = {}
    for v in report_order(set(have)):
        per_src = {}
        for src in next(iter(have[v].values()))["plasticity"]["curves"]:
            cs = [e["plasticity"]["curves"][src] for e in have[v].values()]
            per_src[src] = {"steps": [p["step"] for p in cs[0]],
                            "bpb": [mean([c[i]["bpb"] for c in cs]) for i in range(len(cs[0]))]}
            per_src[src].update(start_bpb=per_src[src]["bpb"][0],
                                final_bpb=per_src[src]["bpb"][-1])
        row = {"auc": percentile_interval(point[v], reps[v]).as_dict(), "sources": per_src,
               "final_bpb_mean": mean([x["final_bpb"] for x in per_src.values()])}
        if REFERENCE in point and v != REFERENCE:
            iv = percentile_interval(point[REFERENCE] - point[v], reps[REFERENCE] - reps[v])
            row.update(vs_untrained=iv.as_dict(), verdict=verdict_word(iv))
        out[v] = row
    return out


def evaluation(evals: ByVariant, pre_rows: dict[str, dict], n_boot: int = 2000) -> dict:
    any_eval = next(iter(next(iter(evals.values())).values()))
    unigram = any_eval.get("unigram", {})
    tables = {p: t for p in PROTOCOLS if (t := _table(evals, p, unigram, n_boot))}
    cpt = tables.get("cpt_fresh", {})
    beating = [v for v, r in cpt.items() if r.get("id", {}).get("beats_untrained")]
    steps = [e["continued"]["fresh"].get("steps") for by_seed in evals.values()
             for e in by_seed.values() if e.get("continued", {}).get("fresh")]
    return {"tables": tables, "plasticity": _plasticity(evals, n_boot),
            **report_body.body_evaluation(evals, n_boot),
            "unigram": {s: {k: u[k] for k in ("test_bpb", "unigram_bpb") if k in u}
                        for s, u in unigram.items()},
            "cpt_check": {"steps": steps[0] if steps else 0, "bodies_beating_untrained": beating,
                          "readable": bool(beating) or REFERENCE not in cpt},
            "comm_bytes": {v: r["comm_bytes"] for v, r in pre_rows.items()},
            "embedding_bytes_per_source": {v: r["embedding_bytes_per_source"]
                                           for v, r in pre_rows.items()}}


# ------------------------------------------------------------------------------ markdown ----
def evaluation_markdown(summary: dict) -> list[str]:
    ev = summary["evaluation"]
    lines = ["## Test bits/byte with 95 % intervals (lower is better)", ""]
    head = ["variant", "protocol", "ID mean", "ID vs STD %", "OOD mean", "OOD vs STD %",
            "ID × unigram", "comm MB", "emb. MB/source"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for proto, rows in ev["tables"].items():
        for v, r in rows.items():
            i, o = r.get("id", {}), r.get("ood", {})
            cells = [v, PROTOCOLS[proto], fmt_iv(i.get("mean")),
                     _vs(i), fmt_iv(o.get("mean")), _vs(o),
                     fmt_iv(i.get("unigram_ratio"), ".2f"),
                     fmt(ev["comm_bytes"].get(v) and ev["comm_bytes"][v] / 1e6, ".1f"),
                     fmt(ev["embedding_bytes_per_source"].get(v)
                         and ev["embedding_bytes_per_source"][v] / 1e6, ".2f")]
            lines.append("| " + " | ".join(cells) + " |")
    over = sorted({(d, ", ".join(r[d]["sources"])) for rows in ev["tables"].values()
                   for r in rows.values() for d in DISTS if r.get(d, {}).get("sources")})
    lines += ["", "Means over the sources every variant in the row's protocol has ("
              + "; ".join(f"{d.upper()}: {s}" for d, s in over) + "), averaged over seeds. "
              "'vs STD %': how much lower than STD on the same documents (positive = better), "
              "with its paired interval and the verdict it supports. '× unigram': the mean "
              "divided by an add-one unigram model's bits/byte on the same test documents "
              "(global tokenizer; < 1 = better than word-piece frequencies). CPT = continued "
              "pre-training of each body on the mixture; `random` = the untrained body given "
              "the same CPT.", ""]
    lines += _per_source_markdown(ev)
    lines += report_body.markdown(ev) + _plasticity_markdown(ev)
    return lines


def _vs(cell: dict) -> str:
    if "vs_std_pct" not in cell:
        return "—"
    return f"{fmt_iv(cell['vs_std_pct'], '+.1f')} {cell['verdict']}"


def _per_source_markdown(ev: dict) -> list[str]:
    out = []
    for n, (proto, rows) in enumerate(ev["tables"].items()):
        srcs = sorted({s for r in rows.values() for s in r["bpb"]})
        out += [f"### Per source, {PROTOCOLS[proto]}: test bits/byte (mean over seeds)", ""]
        head = ["variant", *srcs]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        uni = ev["unigram"]
        if uni:
            out.append("| " + " | ".join(["unigram", *[fmt(uni.get(s, {}).get("test_bpb"))
                                                      for s in srcs]]) + " |")
        for v, r in rows.items():
            out.append("| " + " | ".join([v, *[fmt(r["bpb"].get(s)) for s in srcs]]) + " |")
        se = {s: [r["se_pct"][s] for r in rows.values() if s in r["se_pct"]] for s in srcs}
        out.append("")
        if n == 0:
            out += ["Standard error of one source's bits/byte from its test documents alone "
                    "(documents resampled; range over variants): " + ", ".join(
                        f"{s} {min(v):.1f}–{max(v):.1f} %" for s, v in se.items() if v)
                    + ". A single number is only that precise; differences between variants "
                      "are paired on the same documents and much tighter (the intervals "
                      "above).", ""]
    return out


def _plasticity_markdown(ev: dict) -> list[str]:
    if not ev["plasticity"]:
        return []
    srcs = sorted({s for p in ev["plasticity"].values() for s in p["sources"]})
    out = ["## Plasticity: adapting each body to an unseen source", ""]
    head = ["variant", *[f"{s} step 0 → final" for s in srcs], "mean over curve [95 %]",
            "vs untrained"]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v, p in ev["plasticity"].items():
        cells = [v, *[f"{fmt(p['sources'][s]['start_bpb'])} → {fmt(p['sources'][s]['final_bpb'])}"
                      if s in p["sources"] else "—" for s in srcs],
                 fmt_iv(p["auc"]),
                 f"{fmt_iv(p['vs_untrained'], '+.3f')} {p['verdict']}"
                 if "vs_untrained" in p else "—"]
        out.append("| " + " | ".join(cells) + " |")
    out += ["", "Validation bits/byte of the unseen source while the body and a fresh embedding "
            "train on it alone; 'mean over curve' is the trapezoidal mean over the steps "
            "(lower = more plastic); 'vs untrained' = untrained − variant (positive: adapts "
            "faster than a random body).", ""]
    return out


# ------------------------------------------------------------------------- csv and plots ----
def plasticity_csv(summary: dict) -> str:
    """step, variant, value: bits/byte averaged over the unseen sources (DVC plots)."""
    plast = summary.get("evaluation", {}).get("plasticity", {})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["step", "variant", "value"])
    for v, p in plast.items():
        steps = sorted({s for x in p["sources"].values() for s in x["steps"]})
        for step in steps:
            vals = [x["bpb"][x["steps"].index(step)] for x in p["sources"].values()
                    if step in x["steps"]]
            w.writerow([step, v, f"{mean(vals):.6f}"])
    return buf.getvalue()


def plot_evaluation(summary: dict, out_dir: Path) -> list[Path]:
    """bpb_per_source.png (bars with intervals, per protocol) and plasticity.png."""
    if "evaluation" not in summary:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ev = summary["evaluation"]
    paths = report_body.plot_bodies(ev, out_dir)
    tables = ev["tables"]
    if tables:
        fig, axes = plt.subplots(1, len(tables), figsize=(4.5 * len(tables), 3.6),
                                 squeeze=False)
        for ax, (proto, rows) in zip(axes[0], tables.items()):
            names = list(rows)
            for j, dist in enumerate(("id", "ood")):
                ivs = [rows[v].get(dist, {}).get("mean") for v in names]
                xs = [i + 0.4 * j for i, iv in enumerate(ivs) if iv]
                vals = [iv for iv in ivs if iv]
                ax.bar(xs, [iv["value"] for iv in vals], 0.38,
                       yerr=[[iv["value"] - iv["low"] for iv in vals],
                             [iv["high"] - iv["value"] for iv in vals]],
                       label="in distribution" if dist == "id" else "held out", capsize=2)
            ax.set_xticks([i + 0.2 for i in range(len(names))], names, rotation=30)
            ax.set_ylabel("test bits/byte (95 % interval)")
            ax.set_title(PROTOCOLS[proto], fontsize=9)
            ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(Path(out_dir) / "bpb_per_source.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    plast = ev["plasticity"]
    if plast:
        unseen = sorted({s for p in plast.values() for s in p["sources"]})
        fig, axes = plt.subplots(1, len(unseen), figsize=(5 * len(unseen), 3.6), squeeze=False)
        for ax, src in zip(axes[0], unseen):
            for v, p in plast.items():
                if src in p["sources"]:
                    c = p["sources"][src]
                    ax.plot(c["steps"], c["bpb"], marker=".", label=v,
                            linestyle="--" if v == REFERENCE else "-")
            ax.set_xlabel(f"adaptation steps on {src}")
            ax.set_ylabel("validation bits/byte")
            ax.set_title(f"plasticity: {src}")
            ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(Path(out_dir) / "plasticity.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


__all__ = ["Interval", "evaluation", "evaluation_markdown", "fmt", "fmt_iv", "plasticity_csv",
           "plot_evaluation", "PROTOCOLS"]
