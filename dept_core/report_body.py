"""The body-level part of the comparison: the CPT curve, downstream and zero-shot minimal
pairs, each with the floor (the untrained body under the same protocol) and, for downstream,
the ceilings (majority class, bag of words) as rows of the same paired table.

Accuracies are paired: every row is scored on the same test rows (items); the interval
resamples them (and seeds) once per replicate for every row alike (`stats.paired_accuracy`).
A row that cannot read some items (SPEC as trained has no model for a held-out language) is
compared on the items every row of its protocol reads, and the table says which.
"""

from __future__ import annotations

import numpy as np

from dept_core.metrics import mean
from dept_core.stats import PairedBootstrap, paired_accuracy, percentile_interval, verdict_word
from dept_core.variants import BASELINE, REFERENCE, report_order

ByVariant = dict[str, dict[int, dict]]
DOWNSTREAM = {"as_trained": "fine-tuned as trained", "after_cpt": "fine-tuned after CPT",
              "frozen_probe": "linear head on the frozen body"}
ZERO_SHOT = {"as_trained": "as trained (own tokenizer)", "after_cpt": "after CPT",
             "probe": "frozen body + probe embedding"}
CEILINGS = {"majority": "majority class", "bag_of_words": "bag of words (char n-grams)"}


def _seeds(evals: ByVariant) -> list[int]:
    return sorted(set.intersection(*(set(by_seed) for by_seed in evals.values())))


def accuracy_table(rows: dict[str, dict[int, list]], keep: list[int], n_boot: int) -> dict:
    """Paired accuracies of `rows` (name -> seed -> per-item 1/0/None) on the items in `keep`
    that every row can read; vs the untrained body and vs STD where those rows exist."""
    seeds = sorted(set.intersection(*(set(by) for by in rows.values())))
    common = [i for i in keep if all(rows[r][s][i] is not None for r in rows for s in seeds)]
    if not common:
        return {}
    point, reps = paired_accuracy({r: {s: [rows[r][s][i] for i in common] for s in seeds}
                                   for r in rows}, n_boot)
    out = {}
    for r in rows:
        row = {"accuracy": percentile_interval(point[r], reps[r]).as_dict(), "n": len(common)}
        for other, key in ((REFERENCE, "vs_untrained"), (BASELINE, "vs_std")):
            if other in point and r != other and r not in CEILINGS:
                iv = percentile_interval(point[r] - point[other], reps[r] - reps[other])
                row[key] = {**iv.as_dict(), "verdict": verdict_word(iv)}
        out[r] = row
    return out


# ------------------------------------------------------------------------------ downstream ----
def downstream(evals: ByVariant, n_boot: int) -> dict:
    have = {v: by for v, by in evals.items()
            if all(e.get("downstream", {}).get("task") for e in by.values())}
    if not have:
        return {}
    seeds = _seeds(have)
    first = next(iter(have.values()))[seeds[0]]["downstream"]
    task = first["task"]
    # the ceilings do not depend on the body: the reference's evaluation (or any) has them
    ceil = next((e["downstream"]["ceilings"] for by in have.values() for e in by.values()
                 if e["downstream"].get("ceilings")), {})
    head = [i for i, lang in enumerate(task["test_langs"]) if lang in task["train_langs"]]
    out = {"task": {k: task[k] for k in ("labels", "train_langs", "n_train", "n_val",
                                          "n_test")}, "protocols": {}}
    for proto in DOWNSTREAM:
        bodies = {v: {s: e["downstream"][proto]["correct"] for s, e in by.items()}
                  for v, by in have.items()
                  if all(proto in e["downstream"] for e in by.values())}
        if not bodies:
            continue
        rows = {c: {s: ceil[c]["correct"] for s in seeds} for c in CEILINGS if c in ceil}
        rows.update({v: bodies[v] for v in report_order(set(bodies))})
        table = accuracy_table(rows, head, n_boot)
        for v in bodies:
            res = [e["downstream"][proto] for e in have[v].values()]
            table[v].update(
                choice=[r["choice"] for r in res],
                macro_f1=mean([r["macro_f1"] for r in res]),
                heldout_accuracy=_heldout(task, [r["correct"] for r in res]))
        for c in (c for c in CEILINGS if c in ceil):
            table[c].update(heldout_accuracy=_heldout(task, [ceil[c]["correct"]]),
                            **{k: ceil[c][k] for k in ("alpha", "label", "ngrams")
                               if k in ceil[c]})
        out["protocols"][proto] = table
    return out


def _heldout(task: dict, corrects: list[list]) -> float | None:
    """Accuracy on the test rows of languages not trained on (zero-shot transfer)."""
    got = [c[i] for c in corrects for i, lang in enumerate(task["test_langs"])
           if lang not in task["train_langs"] and c[i] is not None]
    return sum(got) / len(got) if got else None


# ------------------------------------------------------------------------------ zero-shot ----
def zero_shot(evals: ByVariant, n_boot: int) -> dict:
    have = {v: by for v, by in evals.items()
            if all(e.get("zero_shot", {}).get("items") for e in by.values())}
    if not have:
        return {}
    first = next(iter(next(iter(have.values())).values()))["zero_shot"]
    sources = list(first["items"])
    out = {"items": first["items"], "chance": 1 / first["choices"], "protocols": {}}
    for proto in ZERO_SHOT:
        rows = {}
        for v in report_order(set(have)):
            if all(proto in e["zero_shot"] for e in have[v].values()):
                rows[v] = {s: _flat(e["zero_shot"][proto]["correct"], first["items"], sources)
                           for s, e in have[v].items()}
        if not rows:
            continue
        n = sum(first["items"].values())
        table = accuracy_table(rows, list(range(n)), n_boot)
        for v in rows:
            per = [e["zero_shot"][proto]["accuracy_per_source"] for e in have[v].values()]
            table[v]["per_source"] = {s: mean([p[s] for p in per if s in p]) for s in sources
                                      if any(s in p for p in per)}
        covered = [s for s in sources if all(
            table[v]["per_source"].get(s) is not None for v in rows)]
        out["protocols"][proto] = {"rows": table, "sources": covered}
    return out


def _flat(correct: dict[str, list | None], items: dict[str, int], sources: list[str]) -> list:
    """Per-source correctness as one list in a fixed source order (None: not readable)."""
    out: list = []
    for s in sources:
        c = correct.get(s)
        out += c if c is not None else [None] * items[s]
    return out


# ------------------------------------------------------------------------------ CPT curve ----
def cpt_curve(evals: ByVariant, n_boot: int) -> dict:
    """Validation bits/byte of every body at each CPT checkpoint, with the paired gap to the
    untrained body and to STD (validation documents resampled)."""
    have = {v: by for v, by in evals.items()
            if all(e.get("continued", {}).get("fresh", {}).get("curve") for e in by.values())}
    if not have:
        return {}
    seeds = _seeds(have)
    steps = [p["step"] for p in next(iter(have.values()))[seeds[0]]["continued"]["fresh"]["curve"]]
    out: dict = {"steps": steps, "variants": {v: [] for v in report_order(set(have))}}
    for i, step in enumerate(steps):
        points = {v: {s: have[v][s]["continued"]["fresh"]["curve"][i]["val"] for s in seeds}
                  for v in have}
        sources = sorted(set.intersection(*(set(p) for by in points.values()
                                            for p in by.values())))
        losses = {v: {s: {src: np.asarray(points[v][s][src]["docs"]["loss"])
                          for src in sources} for s in seeds} for v in points}
        doc_bytes = {src: np.asarray(points[next(iter(points))][seeds[0]][src]["docs"]["bytes"],
                                     dtype=np.float64) for src in sources}
        boot = PairedBootstrap(losses, doc_bytes, sources, n_boot)
        for v in out["variants"]:
            cell = {"step": step, "val_bpb": boot.mean(v).as_dict()}
            if REFERENCE in points and v != REFERENCE:
                iv = boot.diff(v, REFERENCE)
                cell["vs_untrained"] = {**iv.as_dict(), "verdict": verdict_word(iv)}
            if BASELINE in points and v != BASELINE:
                iv = boot.diff(v, BASELINE)
                cell["vs_std"] = {**iv.as_dict(), "verdict": verdict_word(iv)}
            out["variants"][v].append(cell)
    return out


def probe_choices(evals: ByVariant) -> dict:
    """Each body's probe rate (per seed) and whether it sits at an end of the grid."""
    return {v: {"lr": [e["probe"]["lr"] for e in by.values()],
                "grid": sorted(float(k) for k in next(iter(by.values()))["probe"]["val_bpb"]),
                "at_grid_edge": any(e["probe"]["at_grid_edge"] for e in by.values())}
            for v, by in evals.items() if all(e.get("probe") for e in by.values())}


def body_evaluation(evals: ByVariant, n_boot: int) -> dict:
    return {"cpt_curve": cpt_curve(evals, n_boot), "downstream": downstream(evals, n_boot),
            "zero_shot": zero_shot(evals, n_boot), "probe_choices": probe_choices(evals)}


# ------------------------------------------------------------------------------ markdown ----
def _iv(iv: dict | None, spec: str = ".3f") -> str:
    if not iv:
        return "—"
    return f"{format(iv['value'], spec)} [{format(iv['low'], spec)}, {format(iv['high'], spec)}]"


def _vs(cell: dict | None, spec: str = "+.3f") -> str:
    return f"{_iv(cell, spec)} {cell['verdict']}" if cell else "—"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *["| " + " | ".join(r) + " |" for r in rows], ""]


def markdown(ev: dict) -> list[str]:
    return _probe_md(ev) + _curve_md(ev) + _downstream_md(ev) + _zero_shot_md(ev)


def _probe_md(ev: dict) -> list[str]:
    rows = ev["tables"].get("probe")
    if not rows:
        return []
    choice = ev.get("probe_choices", {})
    out = ["## Frozen-body probe: the body frozen, only a fresh global embedding trains", ""]
    lines = []
    for v, r in rows.items():
        i, o = r.get("id", {}), r.get("ood", {})
        lr = ", ".join(f"{x:g}" for x in choice.get(v, {}).get("lr", []))
        edge = " (edge of the grid)" if choice.get(v, {}).get("at_grid_edge") else ""
        lines.append([v, lr + edge, _iv(i.get("mean")),
                      _vs(i.get("vs_untrained")),
                      f"{_iv(i.get('vs_std_pct'), '+.1f')} {i.get('verdict', '')}"
                      if "vs_std_pct" in i else "—", _iv(o.get("mean"))])
    grid = next(iter(choice.values()), {}).get("grid", [])
    out += _table(["body", "chosen lr", "test bits/byte ID [95 %]", "untrained − body",
                   "vs STD %", "test bits/byte OOD"], lines)
    out += [f"Every body gets the same fresh embedding, batches and steps; the rate is chosen "
            f"per body on validation from {', '.join(f'{g:g}' for g in grid)}. `random` is "
            f"the untrained body under the same probe (the floor). Only the embedding trains, "
            f"so a lower number can only come from what the body computes.", ""]
    return out


def _curve_md(ev: dict) -> list[str]:
    c = ev.get("cpt_curve")
    if not c:
        return []
    out = ["## CPT (fresh global embedding, whole model): validation bits/byte along the way",
           ""]
    lines = [[v, *[_iv(p["val_bpb"]) for p in pts],
              _vs(pts[-1].get("vs_untrained")), _vs(pts[-1].get("vs_std"))]
             for v, pts in c["variants"].items()]
    out += _table(["body", *[f"step {s}" for s in c["steps"]],
                   "untrained − body (last)", "STD − body (last)"], lines)
    out += ["Mean over the training sources' validation splits, paired intervals over their "
            "documents. Read along a row: whether the gap between bodies closes as a fresh "
            "embedding is learned (then the final CPT numbers mostly measure the embedding) "
            "or holds.", ""]
    return out


def _downstream_md(ev: dict) -> list[str]:
    ds = ev.get("downstream")
    if not ds:
        return []
    t = ds["task"]
    out = [f"## Downstream: topic classification ({len(t['labels'])} labels)", ""]
    lines, seen = [], set()
    for proto, table in ds["protocols"].items():
        for r, row in table.items():
            if r in CEILINGS and r in seen:  # the ceilings are the same in every protocol
                continue
            seen.add(r)
            ch = row.get("choice")
            chosen = ("; ".join(_choice(x) for x in ch) if ch else
                      (f"alpha {row['alpha']:g}" if "alpha" in row else "—"))
            lines.append([DOWNSTREAM[proto] if r not in CEILINGS else "ceiling",
                          CEILINGS.get(r, r), _iv(row["accuracy"]),
                          _vs(row.get("vs_untrained")), _vs(row.get("vs_std")),
                          "—" if row.get("heldout_accuracy") is None
                          else f"{row['heldout_accuracy']:.3f}", chosen])
    out += _table(["protocol", "row", "accuracy [95 %]", "− untrained", "− STD",
                   "held-out languages", "chosen on validation"], lines)
    n = next(iter(ds["protocols"].values()))
    n = next(iter(n.values()))["n"]
    out += [f"Accuracy on the {n} test rows of the training languages "
            f"({', '.join(t['train_langs'])}) that every row of the protocol reads; the "
            f"train ({t['n_train']}) and validation ({t['n_val']}) rows are theirs too, "
            f"validation grouped by package. 'held-out languages': zero-shot transfer to the "
            f"other languages, where the body can read them. Every body gets the same grid; "
            f"the untrained body (`random`) is the floor, the bag of words the ceiling.", ""]
    return out


def _choice(c: dict) -> str:
    if "C" in c:
        return f"C {c['C']:g}" + (" (edge)" if c.get("at_grid_edge") else "")
    return f"lr {c['lr']:g}, {c['steps']} steps" + (" (edge)" if c.get("at_grid_edge") else "")


def _zero_shot_md(ev: dict) -> list[str]:
    zs = ev.get("zero_shot")
    if not zs:
        return []
    out = ["## Zero-shot minimal pairs: real text against the same words reordered", ""]
    lines = [["chance", "—", f"{zs['chance']:.3f}", "—", "—", "—"]]
    for proto, p in zs["protocols"].items():
        for v, row in p["rows"].items():
            lines.append([ZERO_SHOT[proto], v, _iv(row["accuracy"]),
                          _vs(row.get("vs_untrained")), _vs(row.get("vs_std")),
                          ", ".join(f"{s} {a:.2f}" for s, a in row["per_source"].items())])
    out += _table(["protocol", "body", "accuracy [95 %]", "− untrained", "− STD",
                   "per source"], lines)
    out += [f"Items per source: {', '.join(f'{s} {n}' for s, n in zs['items'].items())} "
            f"(test documents; every choice has the real text's token count under every "
            f"tokenizer, so length cannot decide). A protocol's accuracy is over the items "
            f"every body in it reads.", ""]
    return out


# --------------------------------------------------------------------------------- plot ----
def plot_bodies(ev: dict, out_dir) -> list:
    """bodies.png: each body's paired difference to the untrained body, per body-level
    protocol (probe: bits/byte saved; downstream and zero-shot: accuracy gained), with 95 %
    intervals — above zero, the body holds something an untrained one does not."""
    from pathlib import Path

    panels = []
    probe = ev["tables"].get("probe", {})
    if probe:
        panels.append(("frozen-body probe\nbits/byte below the untrained body",
                       {v: r["id"]["vs_untrained"] for v, r in probe.items()
                        if r.get("id", {}).get("vs_untrained")}))
    ds = ev.get("downstream", {}).get("protocols", {})
    for proto, table in ((p, ds[p]) for p in DOWNSTREAM if p in ds):
        panels.append((f"downstream, {DOWNSTREAM[proto]}\naccuracy above the untrained body",
                       {v: r["vs_untrained"] for v, r in table.items() if "vs_untrained" in r}))
    zs = ev.get("zero_shot", {}).get("protocols", {})
    for proto, p in ((p, zs[p]) for p in ZERO_SHOT if p in zs):
        panels.append((f"minimal pairs, {ZERO_SHOT[proto]}\naccuracy above the untrained body",
                       {v: r["vs_untrained"] for v, r in p["rows"].items()
                        if "vs_untrained" in r}))
    panels = [(t, d) for t, d in panels if d]
    if not panels:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.3 * rows), squeeze=False)
    for ax, (title, data) in zip(axes.flat, panels):
        names = report_order(set(data))
        vals = [data[v]["value"] for v in names]
        err = [[data[v]["value"] - data[v]["low"] for v in names],
               [data[v]["high"] - data[v]["value"] for v in names]]
        colours = ["tab:green" if data[v]["low"] > 0 else "tab:red" if data[v]["high"] < 0
                   else "tab:grey" for v in names]
        ax.bar(range(len(names)), vals, yerr=err, color=colours, capsize=3)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(range(len(names)), names, rotation=30, fontsize=8)
        ax.set_title(title, fontsize=9)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    path = Path(out_dir) / "bodies.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]
