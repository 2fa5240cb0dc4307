"""The study report: every variant at its own best tuning point per setting, the gap to STD
against the budget, the body-level protocols against their floor and ceiling, the verdict,
CSVs and plots (`dept_core.study` expands and chooses; this module reports)."""

from __future__ import annotations

from pathlib import Path

from dept_core.study import Cell, StudySpec, label
from dept_core.variants import BASELINE, REFERENCE


# ------------------------------------------------------------------------------ report ----
def merged(choice: dict[str, Cell], pretrain: dict, evals: dict) -> tuple[dict, dict]:
    """Each variant's results from its own chosen cell (the untrained body from STD's)."""
    metrics = {v: pretrain[c.id][v] for v, c in choice.items()}
    ev = {v: evals[c.id][v] for v, c in choice.items() if v in evals.get(c.id, {})}
    ref_cell = choice.get(BASELINE) or next(iter(choice.values()))
    if REFERENCE in evals.get(ref_cell.id, {}):
        ev[REFERENCE] = evals[ref_cell.id][REFERENCE]
    return metrics, ev


def rows_of(spec: StudySpec, cell: Cell, summary: dict, choice: dict[str, Cell]) -> list[dict]:
    """The study table's rows for one setting: every variant at its own best tuning point,
    and the untrained body (the floor of the body-level protocols)."""
    ev = summary.get("evaluation", {})
    tables = ev.get("tables", {})
    names = list(summary["pretraining"]["variants"])
    if REFERENCE in tables.get("probe", {}) or REFERENCE in tables.get("cpt_fresh", {}):
        names.append(REFERENCE)
    rows = []
    for v in names:
        pre = summary["pretraining"]["variants"].get(v, {})
        row = {"setting": cell.setting_label,
               "group": label({k: x for k, x in cell.setting.items() if k not in spec.budget}),
               "tokens_per_source": summary["settings"]["tokens_per_source"],
               "variant": v, "chosen": choice[v].tune if v in choice else {},
               "val_bpb": pre.get("val_bpb_mean")}
        for proto in ("as_trained", "cpt_fresh", "probe"):
            cellv = tables.get(proto, {}).get(v, {}).get("id", {})
            if "mean" in cellv:
                row[f"{proto}_bpb"] = cellv["mean"]
            if "vs_std_pct" in cellv:
                row[f"{proto}_vs_std"] = cellv["vs_std_pct"]
                row[f"{proto}_verdict"] = cellv["verdict"]
            if "vs_untrained" in cellv:
                row[f"{proto}_vs_untrained"] = cellv["vs_untrained"]
        if v in ev.get("plasticity", {}):
            row["plasticity_auc"] = ev["plasticity"][v]["auc"]
        for proto, table in ev.get("downstream", {}).get("protocols", {}).items():
            if v in table:
                row[f"downstream_{proto}"] = table[v]["accuracy"]
                if "vs_untrained" in table[v]:
                    row[f"downstream_{proto}_vs_untrained"] = table[v]["vs_untrained"]
            if "bag_of_words" in table:
                row["bag_of_words"] = table["bag_of_words"]["accuracy"]
        for proto, p in ev.get("zero_shot", {}).get("protocols", {}).items():
            if v in p["rows"]:
                row[f"zero_shot_{proto}"] = p["rows"][v]["accuracy"]
                if "vs_untrained" in p["rows"][v]:
                    row[f"zero_shot_{proto}_vs_untrained"] = p["rows"][v]["vs_untrained"]
        rows.append(row)
    return rows


def study_verdict(rows: list[dict]) -> list[str]:
    """Per variant and protocol: where it beats STD, ties, or loses, with the intervals."""
    out = []
    variants = [v for v in dict.fromkeys(r["variant"] for r in rows)
                if v not in (BASELINE, REFERENCE)]
    for proto, name in (("as_trained", "as trained"), ("cpt_fresh", "after CPT (fresh emb.)"),
                        ("probe", "frozen-body probe")):
        for v in variants:
            cells = [r for r in rows if r["variant"] == v and f"{proto}_vs_std" in r]
            if not cells:
                continue
            by_word: dict[str, list[str]] = {}
            for r in sorted(cells, key=lambda r: (r["group"], r["tokens_per_source"])):
                iv = r[f"{proto}_vs_std"]
                where = (f"{tokens_text(r['tokens_per_source'])} tokens/source"
                         + (f", {r['group']}" if r["group"] != "base" else ""))
                by_word.setdefault(r[f"{proto}_verdict"], []).append(
                    f"{where} ({iv['value']:+.1f} % [{iv['low']:+.1f}, {iv['high']:+.1f}])")
            out.append(f"{v} vs STD, {name}, in distribution: " + "; ".join(
                f"{word} at {', '.join(where)}" for word, where in by_word.items()) + ".")
            trend = _trend(cells, proto)
            if trend:
                out.append(trend)
    return out + _floor_verdict(rows)


#: body-level protocols whose rows carry a paired difference to the untrained body
FLOORS = (("probe_vs_untrained", "frozen-body probe"),
          ("downstream_as_trained_vs_untrained", "downstream fine-tuned as trained"),
          ("downstream_after_cpt_vs_untrained", "downstream fine-tuned after CPT"),
          ("downstream_frozen_probe_vs_untrained", "downstream linear head, frozen body"),
          ("zero_shot_as_trained_vs_untrained", "zero-shot minimal pairs as trained"),
          ("zero_shot_probe_vs_untrained", "zero-shot minimal pairs, frozen body + probe"))


def _floor_verdict(rows: list[dict]) -> list[str]:
    """Per body-level protocol and budget: which bodies beat the untrained one."""
    out = []
    for key, name in FLOORS:
        by_setting: dict[str, list[str]] = {}
        for r in rows:
            if key in r:
                where = f"{tokens_text(r['tokens_per_source'])} tokens/source" + (
                    f", {r['group']}" if r["group"] != "base" else "")
                by_setting.setdefault(where, [])
                if r[key]["verdict"] == "better":
                    by_setting[where].append(r["variant"])
        if by_setting:
            out.append(f"Bodies beating the untrained body, {name}: " + "; ".join(
                f"{where}: {', '.join(vs) or 'none'}" for where, vs in by_setting.items())
                + ".")
    return out


def _trend(cells: list[dict], proto: str) -> str | None:
    """Does the gap move with the budget beyond its intervals (smallest vs largest budget)?"""
    notes = []
    for group in dict.fromkeys(r["group"] for r in cells):
        g = sorted((r for r in cells if r["group"] == group),
                   key=lambda r: r["tokens_per_source"])
        if len(g) < 2:
            continue
        lo, hi = g[0][f"{proto}_vs_std"], g[-1][f"{proto}_vs_std"]
        if hi["low"] > lo["high"]:
            word = "moves in DEPT's favour"
        elif hi["high"] < lo["low"]:
            word = "moves in STD's favour"
        else:
            word = "does not move beyond the intervals"
        notes.append(f"from {tokens_text(g[0]['tokens_per_source'])} to "
                     f"{tokens_text(g[-1]['tokens_per_source'])} tokens/source"
                     + (f" ({group})" if group != "base" else "")
                     + f" the gap {word} ({lo['value']:+.1f} → {hi['value']:+.1f} %)")
    if not notes:
        return None
    return f"  {g[0]['variant']}: " + "; ".join(notes) + "."


def tokens_text(n: float) -> str:
    return f"{n / 1e6:.3g} M" if n >= 1e6 else f"{n / 1e3:.3g} k" if n >= 1e3 else f"{n:g}"


def fmt_iv(iv: dict | None, spec: str = ".3f") -> str:
    if not iv:
        return "—"
    return f"{format(iv['value'], spec)} [{format(iv['low'], spec)}, {format(iv['high'], spec)}]"


def markdown(study: dict) -> str:
    lines = [f"# Study `{study['name']}`", "",
             f"{study['cells']} cells ({len(study['settings'])} settings × "
             f"{study['tune_points']} tuning points), seeds {study['seeds']}; every variant at "
             f"its own best tuning point, chosen on validation bits/byte only.", "",
             "## Verdict", "", *[f"- {s}" if not s.startswith("  ") else f"  - {s.strip()}"
                                 for s in study["verdict"]], "",
             "## The gap to STD against the budget", "",
             "| setting | tokens/source | variant | chosen | as trained ID | vs STD % | "
             "CPT fresh ID | vs STD % | frozen probe ID | vs STD % | plasticity |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    protos = ("as_trained", "cpt_fresh", "probe")
    for r in study["rows"]:
        vs = {p: (f"{fmt_iv(r[f'{p}_vs_std'], '+.1f')} {r[f'{p}_verdict']}"
                  if f"{p}_vs_std" in r else "—") for p in protos}
        chosen = ", ".join(f"{k.split('.')[-1]}={x}" for k, x in r["chosen"].items()) or "—"
        lines.append(f"| {r['setting']} | {tokens_text(r['tokens_per_source'])} | {r['variant']} "
                     f"| {chosen} | {fmt_iv(r.get('as_trained_bpb'))} | {vs['as_trained']} | "
                     f"{fmt_iv(r.get('cpt_fresh_bpb'))} | {vs['cpt_fresh']} | "
                     f"{fmt_iv(r.get('probe_bpb'))} | {vs['probe']} | "
                     f"{fmt_iv(r.get('plasticity_auc'))} |")
    lines += ["", "Test bits/byte means over the training sources (in distribution) with paired "
              "95 % bootstrap intervals; 'vs STD %' positive = lower than STD on the same "
              "documents; the frozen probe trains only a fresh embedding on each frozen body; "
              "plasticity = mean bits/byte over the adaptation curve on unseen sources (lower "
              "= more plastic); `random` = the untrained body under the same protocols.", "",
              "## The bodies against the floor and the ceiling", "",
              "| setting | tokens/source | body | downstream as trained | after CPT | "
              "linear head, frozen | zero-shot as trained | zero-shot, frozen + probe |",
              "|---|---|---|---|---|---|---|---|"]
    ceilings = {}
    for r in study["rows"]:
        if "bag_of_words" in r:
            ceilings[r["setting"]] = r["bag_of_words"]
        cells = [_floor_cell(r, k) for k in (
            "downstream_as_trained", "downstream_after_cpt", "downstream_frozen_probe",
            "zero_shot_as_trained", "zero_shot_probe")]
        lines.append(f"| {r['setting']} | {tokens_text(r['tokens_per_source'])} | "
                     f"{r['variant']} | " + " | ".join(cells) + " |")
    lines += ["", "Accuracy [95 %] (− untrained, paired: the verdict against the untrained "
              "body). Downstream ceiling, bag of words: " + "; ".join(
                  f"{k} {fmt_iv(v)}" for k, v in ceilings.items()) + ".", ""]
    return "\n".join(lines)


def _floor_cell(r: dict, key: str) -> str:
    if key not in r:
        return "—"
    vs = r.get(f"{key}_vs_untrained")
    return fmt_iv(r[key]) + (f" ({vs['value']:+.3f}, {vs['verdict']})" if vs else "")


def gap_csv(rows: list[dict]) -> str:
    out = ["setting,group,tokens_per_source,variant,protocol,vs_std_pct,low,high,verdict"]
    for r in rows:
        for p in ("as_trained", "cpt_fresh"):
            if f"{p}_vs_std" in r:
                iv = r[f"{p}_vs_std"]
                out.append(f"\"{r['setting']}\",\"{r['group']}\",{r['tokens_per_source']},"
                           f"{r['variant']},{p},{iv['value']:.4f},{iv['low']:.4f},"
                           f"{iv['high']:.4f},{r[f'{p}_verdict']}")
    return "\n".join(out) + "\n"


def gap_long_csv(rows: list[dict], proto: str = "as_trained") -> str:
    """tokens_per_source,variant,value: the gap of one protocol for `dvc plots` (a variant
    of another setting group is named `variant (group)`)."""
    out = ["tokens_per_source,variant,value"]
    for r in rows:
        if f"{proto}_vs_std" in r:
            name = r["variant"] + ("" if r["group"] == "base" else f" ({r['group']})")
            out.append(f"{r['tokens_per_source']},\"{name}\",{r[f'{proto}_vs_std']['value']:.4f}")
    return "\n".join(out) + "\n"


# what `plot` draws: (file stem, row key, y label, title, is a gap to STD)
PANELS = (
    ("gap_as_trained", "as_trained_vs_std", "test bits/byte vs STD, % (positive = better)",
     "Gap to STD, as trained, in distribution", True),
    ("gap_cpt_fresh", "cpt_fresh_vs_std", "test bits/byte vs STD, % (positive = better)",
     "Gap to STD, after CPT (fresh emb.), in distribution", True),
    ("plasticity", "plasticity_auc", "mean bits/byte over adaptation (lower = more plastic)",
     "Plasticity on the unseen sources", False),
    ("gap_probe", "probe_vs_std", "test bits/byte vs STD, % (positive = better)",
     "Gap to STD, frozen-body probe, in distribution", True),
    ("downstream", "downstream_after_cpt", "accuracy (higher = better)",
     "Downstream (topic classification, fine-tuned after CPT)", False),
    ("zero_shot", "zero_shot_as_trained", "accuracy (higher = better; chance 1/choices)",
     "Zero-shot minimal pairs, as trained", False),
)


def plot(rows: list[dict], out_dir: Path) -> list[Path]:
    """One PNG per panel of PANELS against tokens per source: one line per variant and
    setting group (e.g. the data preset), 95 % intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for stem, key, ylabel, title, gap in PANELS:
        sel = [r for r in rows if key in r]
        if not sel:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for line in dict.fromkeys((r["variant"], r["group"]) for r in sel):
            pts = sorted((r for r in sel if (r["variant"], r["group"]) == line),
                         key=lambda r: r["tokens_per_source"])
            x = [r["tokens_per_source"] for r in pts]
            y = [r[key]["value"] for r in pts]
            err = [[r[key]["value"] - r[key]["low"] for r in pts],
                   [r[key]["high"] - r[key]["value"] for r in pts]]
            name = line[0] + ("" if line[1] == "base" else f" ({line[1]})")
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=name)
        if gap:
            ax.axhline(0, color="black", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("training tokens per source")
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_title(f"{title} (95 % intervals)", fontsize=10)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = Path(out_dir) / f"{stem}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
