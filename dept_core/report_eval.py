"""The evaluation part of the comparison (results/evaluate/*): the Table 3/4-style test
table per protocol, plasticity and downstream tables, a verdict generated from the numbers,
the plasticity CSV and the evaluation plots. `dept_core.report` is the entry point.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from dept_core.metrics import area_under_curve, improvement_pct, mean
from dept_core.variants import BASELINE, REFERENCE, report_order
PROTOCOLS = {"as_trained": "as trained (own embeddings)",
             "cpt_fresh": "CPT, fresh global embedding",
             "cpt_pretrained": "CPT, pre-trained global embedding"}


def _ordered(keys) -> list[str]:
    return report_order(set(keys))


def _table(evals: dict[str, dict], section: str) -> dict[str, dict]:
    """One protocol's rows: per-source test bits/byte and perplexity, means, vs STD."""
    rows = {}
    for v in _ordered(evals):
        e = evals[v]
        sec = e.get("as_trained") if section == "as_trained" else \
            e.get("continued", {}).get(section.removeprefix("cpt_"))
        if not sec:
            continue
        ind, ood = sec["in_distribution"], sec["out_of_distribution"]
        rows[v] = {"bpb": {k: m["bpb"] for k, m in {**ind, **ood}.items()},
                   "ppl": {k: m["ppl"] for k, m in {**ind, **ood}.items()},
                   "id_bpb_mean": sec["in_distribution_bpb_mean"],
                   "ood_bpb_mean": sec["out_of_distribution_bpb_mean"],
                   "id_ppl_mean": sec.get("in_distribution_ppl_mean"),
                   "ood_ppl_mean": sec.get("out_of_distribution_ppl_mean")}
    std = rows.get(BASELINE, {})
    for r in rows.values():
        for key in ("id_bpb_mean", "ood_bpb_mean"):
            base, val = std.get(key), r[key]
            r[f"{key}_vs_std_pct"] = improvement_pct(base, val) if base and val else None
    return rows


def evaluation(evals: dict[str, dict], pre_rows: dict[str, dict]) -> dict:
    any_eval = next(iter(evals.values()))
    ind = sorted({k for e in evals.values() for sec in _sections(e)
                  for k in sec["in_distribution"]})
    ood = sorted({k for e in evals.values() for sec in _sections(e)
                  for k in sec["out_of_distribution"]})
    tables = {p: t for p in PROTOCOLS if (t := _table(evals, p))}
    plast = {}
    for v in _ordered(evals):
        curves = evals[v].get("plasticity", {}).get("curves", {})
        if not curves:
            continue
        per = {src: {"start_bpb": c[0]["bpb"], "final_bpb": c[-1]["bpb"],
                     "auc_bpb": area_under_curve([p["step"] for p in c], [p["bpb"] for p in c]),
                     "steps": [p["step"] for p in c], "bpb": [p["bpb"] for p in c]}
               for src, c in curves.items()}
        plast[v] = {"sources": per, "final_bpb_mean": mean([x["final_bpb"] for x in per.values()]),
                    "auc_bpb_mean": mean([x["auc_bpb"] for x in per.values()])}
    down = {v: {k: evals[v]["downstream"][k] for k in ("accuracy", "macro_f1",
                                                       "majority_class_accuracy",
                                                       "accuracy_per_language")}
            for v in _ordered(evals) if evals[v].get("downstream")}
    floor = down.get(REFERENCE)
    for r in down.values():
        r["accuracy_vs_random"] = r["accuracy"] - floor["accuracy"] if floor else None
        r["macro_f1_vs_random"] = r["macro_f1"] - floor["macro_f1"] if floor else None
    return {"in_distribution": ind, "out_of_distribution": ood, "tables": tables,
            "plasticity": plast, "downstream": down,
            "unigram": any_eval.get("unigram", {}),
            "comm_bytes": {v: r["comm_bytes"] for v, r in pre_rows.items()},
            "embedding_bytes_per_source": {v: r["embedding_bytes_per_source"]
                                           for v, r in pre_rows.items()}}


def _sections(e: dict) -> list[dict]:
    return [s for s in [e.get("as_trained"), *e.get("continued", {}).values()] if s]


def _best(rows: dict[str, dict], key, exclude=(REFERENCE,)) -> tuple[str, float] | None:
    cands = [(r[key], v) for v, r in rows.items() if v not in exclude and r.get(key) is not None
             and not (isinstance(r[key], float) and math.isnan(r[key]))]
    return (min(cands)[1], min(cands)[0]) if cands else None


def verdict(summary: dict) -> list[str]:
    """Plain sentences on who wins where — generated from the numbers, never hand-written."""
    ev, out = summary["evaluation"], []
    out.append(f"Pre-training, validation bits/byte (mean over {', '.join(summary['mean_over'])}"
               f"): lowest is **{summary['best_mean']}**.")
    for proto, rows in ev["tables"].items():
        for key, where in (("id_bpb_mean", "in distribution"),
                           ("ood_bpb_mean", "out of distribution")):
            best = _best(rows, key)
            if best is None:
                continue
            line = (f"Test bits/byte {where}, {PROTOCOLS[proto]}: lowest is **{best[0]}** "
                    f"({best[1]:.3f})")
            std = rows.get(BASELINE, {}).get(key)
            if std and best[0] != BASELINE:
                line += f", {improvement_pct(std, best[1]):+.1f} % vs STD ({std:.3f})"
            elif best[0] == BASELINE:
                dept = _best(rows, key, exclude=(REFERENCE, BASELINE))
                if dept:
                    line += (f"; the best DEPT variant, {dept[0]}, is "
                             f"{-improvement_pct(best[1], dept[1]):.1f} % worse")
            out.append(line + ".")
        per_src = {s: _best({v: {"x": r["bpb"].get(s)} for v, r in rows.items()}, "x")
                   for s in ev["in_distribution"] + ev["out_of_distribution"]}
        out.append(f"Per source ({PROTOCOLS[proto]}): " + ", ".join(
            f"{s}: {b[0]}" for s, b in per_src.items() if b) + ".")
    if ev["plasticity"]:
        best = _best(ev["plasticity"], "auc_bpb_mean")
        floor = ev["plasticity"].get(REFERENCE, {}).get("auc_bpb_mean")
        line = (f"Plasticity (mean bits/byte over the adaptation curve on unseen sources, "
                f"lower = adapts faster): most plastic body is **{best[0]}** ({best[1]:.3f})")
        if floor is not None:
            line += f"; the untrained body scores {floor:.3f}"
        out.append(line + ".")
    if ev["downstream"]:
        rows = {v: {"neg": -r["accuracy"], **r} for v, r in ev["downstream"].items()}
        best = _best(rows, "neg")
        r = ev["downstream"][best[0]]
        line = (f"Downstream ({'+'.join(['accuracy', 'macro-F1'])}): best is **{best[0]}** "
                f"(accuracy {r['accuracy']:.3f}, macro-F1 {r['macro_f1']:.3f})")
        floor = ev["downstream"].get(REFERENCE)
        if floor:
            beat = [v for v, x in ev["downstream"].items()
                    if v != REFERENCE and x["accuracy"] > floor["accuracy"]]
            line += (f"; the random-body floor scores {floor['accuracy']:.3f}, and "
                     f"{len(beat)} of {len(ev['downstream']) - 1} pre-trained bodies beat it"
                     + (f" ({', '.join(beat)})" if beat else ""))
        out.append(line + ".")
    return out


def _f(x, spec=".3f", dash="—") -> str:
    return dash if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def evaluation_markdown(summary: dict) -> list[str]:
    ev = summary["evaluation"]
    ind, ood = ev["in_distribution"], ev["out_of_distribution"]
    lines = ["## Test bits/byte per source (the paper's Tables 3 and 4)", ""]
    head = ["variant", "protocol", *ind, "ID mean", "ID vs STD", *[f"{s} (OOD)" for s in ood],
            "OOD mean", "OOD vs STD", "ID ppl", "OOD ppl", "comm MB", "emb. MB/source"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    uni = ev["unigram"]
    if uni:
        cells = ["unigram", "yardstick (UNIGRAM-CE, bits/byte)",
                 *[_f(uni.get(s, {}).get("unigram_bpb")) for s in ind], "", "",
                 *[_f(uni.get(s, {}).get("unigram_bpb")) for s in ood], "", "", "", "", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    for proto, rows in ev["tables"].items():
        for v, r in rows.items():
            cells = [v, PROTOCOLS[proto], *[_f(r["bpb"].get(s)) for s in ind],
                     f"**{_f(r['id_bpb_mean'])}**", _f(r["id_bpb_mean_vs_std_pct"], "+.1f"),
                     *[_f(r["bpb"].get(s)) for s in ood], f"**{_f(r['ood_bpb_mean'])}**",
                     _f(r["ood_bpb_mean_vs_std_pct"], "+.1f"),
                     _f(r["id_ppl_mean"], ".1f"), _f(r["ood_ppl_mean"], ".1f"),
                     _f(ev["comm_bytes"].get(v, None) and ev["comm_bytes"][v] / 1e6, ".1f"),
                     _f(ev["embedding_bytes_per_source"].get(v, None)
                        and ev["embedding_bytes_per_source"][v] / 1e6, ".2f")]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Bits per UTF-8 byte on each source's test split; lower is better. "
              "'vs STD' is the improvement in % over STD under the same protocol. Perplexity "
              "(ppl, per token) compares only rows that share a tokenizer: every CPT row uses "
              "the global one; 'as trained' rows use each variant's own (SPEC-OPT: per-source). "
              "CPT = continued pre-training of the body on the mixture "
              "(evaluate.cpt_fraction of the pre-training steps); `random` is the untrained "
              "body given the same CPT.", ""]
    if ev["plasticity"]:
        srcs = sorted({s for p in ev["plasticity"].values() for s in p["sources"]})
        lines += ["## Plasticity: adapting each body to an unseen source", ""]
        head = ["variant", *[f"{s} step 0 → {s} final" for s in srcs], "mean final",
                "mean over curve"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for v, p in ev["plasticity"].items():
            cells = [v, *[f"{_f(p['sources'][s]['start_bpb'])} → {_f(p['sources'][s]['final_bpb'])}"
                          if s in p["sources"] else "—" for s in srcs],
                     _f(p["final_bpb_mean"]), f"**{_f(p['auc_bpb_mean'])}**"]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "Validation bits/byte of the unseen source while the body and a fresh "
                  "embedding train on it alone; 'mean over curve' is the trapezoidal mean over "
                  "the steps (lower = more plastic).", ""]
    if ev["downstream"]:
        lines += ["## Downstream: topic classification, fine-tuned with a classification head",
                  ""]
        head = ["variant", "accuracy", "macro-F1", "accuracy vs random", "macro-F1 vs random"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for v, r in ev["downstream"].items():
            lines.append("| " + " | ".join([
                v, _f(r["accuracy"]), _f(r["macro_f1"]), _f(r["accuracy_vs_random"], "+.3f"),
                _f(r["macro_f1_vs_random"], "+.3f")]) + " |")
        maj = next(iter(ev["downstream"].values()))["majority_class_accuracy"]
        lines += ["", f"Test split accuracy and macro-F1; `random` is a randomly initialised "
                  f"body of the same shape fine-tuned identically (the floor). Always "
                  f"predicting the majority class scores {maj:.3f}.", ""]
    lines += ["## Verdict", "", *[f"- {s}" for s in summary["verdict"]]]
    return lines


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
    """bpb_per_source.png (bars, per protocol) and plasticity.png (curves per unseen source)."""
    if "evaluation" not in summary:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ev, paths = summary["evaluation"], []
    tables = ev["tables"]
    srcs = ev["in_distribution"] + ev["out_of_distribution"]
    if tables:
        fig, axes = plt.subplots(len(tables), 1, figsize=(max(6, len(srcs) * 1.2), 3.2 *
                                                          len(tables)), squeeze=False)
        for ax, (proto, rows) in zip(axes[:, 0], tables.items()):
            width = 0.8 / max(len(rows), 1)
            for i, (v, r) in enumerate(rows.items()):
                xs = [j + i * width for j in range(len(srcs))]
                ax.bar(xs, [r["bpb"].get(s, 0) for s in srcs], width, label=v)
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(srcs))],
                          [s + (" (OOD)" if s in ev["out_of_distribution"] else "")
                           for s in srcs])
            ax.set_ylabel("test bits/byte")
            ax.set_title(PROTOCOLS[proto])
            ax.legend(fontsize=7, ncol=3)
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
