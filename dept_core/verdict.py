"""The verdict: plain sentences generated from the comparison's numbers and intervals.

Never hand-written: a difference is called better or worse only when its 95 % paired interval
excludes zero, "not distinguishable" otherwise; every sentence that ranks variants names the
protocol, and the first names the settings (budget, model, seeds) the verdict holds for.
"""

from __future__ import annotations

from dept_core.variants import BASELINE, REFERENCE

PROTOCOL_NAMES = {"as_trained": "as trained (own embeddings)",
                  "cpt_fresh": "after CPT with a fresh global embedding",
                  "cpt_pretrained": "after CPT from the pre-trained global embedding",
                  "probe": "frozen-body probe (only a fresh global embedding trains)"}
DIST_NAMES = {"id": "in distribution", "ood": "out of distribution"}
SHORT = {"as_trained": "as trained", "cpt_fresh": "CPT fresh", "cpt_pretrained": "CPT pre-trained",
         "probe": "frozen probe"}


def settings_line(s: dict) -> str:
    return (f"{s['model']}; {s['rounds']} rounds × {s['local_steps']} local steps, "
            f"{s['sources_per_round']} of {len(s['sources'])} sources per round "
            f"({s['schedule']}), batch {s['batch_size']} × {s['seq_len']} tokens: "
            f"{s['tokens_per_source'] / 1e6:.2f} M training tokens per source; inner lr "
            f"{s['lr']:g}, inner state {s['inner_state']}, outer {s['outer']}; STD τ "
            f"{s['std_temperature']:g}; {len(s['seeds'])} seed(s)")


def _iv(iv: dict, spec: str = "+.1f", unit: str = " %") -> str:
    return f"{format(iv['value'], spec)}{unit} [{format(iv['low'], spec)}, " \
           f"{format(iv['high'], spec)}]"


def verdict(summary: dict) -> list[str]:
    out = []
    if summary.get("settings"):
        out.append(f"These numbers hold for: {settings_line(summary['settings'])}. At budgets "
                   f"this small, synchronous training is expected to be favoured (published "
                   f"local-update results); map the gap across budgets before generalising.")
    ev = summary.get("evaluation")
    if not ev:
        pre = summary["pretraining"]
        best = min(((r["val_bpb_mean"], v) for v, r in pre["variants"].items()
                    if r["val_bpb_mean"] is not None), default=None)
        if best:
            out.append(f"Validation bits/byte (no evaluation run): lowest is {best[1]} "
                       f"({best[0]:.3f}); run the evaluate stage for test numbers with "
                       f"intervals.")
        return out
    out += _vs_std(ev)
    out += _unigram(ev)
    out += _cpt(ev)
    out += _bodies(ev)
    out += _plasticity(ev)
    return out


def _vs_std(ev: dict) -> list[str]:
    out, tally = [], {}
    for proto, rows in ev["tables"].items():
        for dist in ("id", "ood"):
            cells = [(v, r[dist]) for v, r in rows.items()
                     if dist in r and "vs_std_pct" in r[dist] and v != REFERENCE]
            if not cells:
                continue
            parts = [f"{v} {_iv(c['vs_std_pct'])} {c['verdict']}" for v, c in cells]
            out.append(f"Test bits/byte {DIST_NAMES[dist]}, {PROTOCOL_NAMES[proto]}, vs STD "
                       f"(positive = lower than STD): " + "; ".join(parts) + ".")
            for v, c in cells:
                tally.setdefault(v, {}).setdefault(c["verdict"], []).append(
                    f"{SHORT[proto]} {dist.upper()}")
    if tally:
        parts = [f"{v} " + ", ".join(f"{word} ({', '.join(where)})"
                                     for word, where in words.items())
                 for v, words in tally.items()]
        out.append("In short, each variant against STD: " + "; ".join(parts) + ".")
    return out


def _unigram(ev: dict) -> list[str]:
    rows = ev["tables"].get("as_trained", {})
    ratios = {v: r["id"]["unigram_ratio"] for v, r in rows.items()
              if "unigram_ratio" in r.get("id", {})}
    if not ratios:
        return []
    line = ("Against the unigram yardstick (as trained, in distribution; test bits/byte ÷ an "
            "add-one unigram model's on the same documents): "
            + "; ".join(f"{v} {_iv(iv, '.2f', '×')}" for v, iv in ratios.items()) + ".")
    weak = [v for v, iv in ratios.items() if iv["high"] >= 1.0]
    if weak:
        line += (f" {', '.join(weak)} do{'es' if len(weak) == 1 else ''} not beat an add-one "
                 f"unigram model beyond the interval: at this budget the models have barely "
                 f"learned, so read every other number with that in mind.")
    return [line]


def _cpt(ev: dict) -> list[str]:
    check = ev.get("cpt_check", {})
    cpt = ev["tables"].get("cpt_fresh", {})
    if not cpt or REFERENCE not in cpt:
        return []
    bodies = [v for v in cpt if v != REFERENCE]
    beat = check.get("bodies_beating_untrained", [])
    if not beat:
        return [f"CPT ({check.get('steps')} steps) is too short to rank bodies: no pre-trained "
                f"body beats the untrained one by more than the interval, so the CPT rows "
                f"measure how fast a fresh embedding is learned, not the bodies."]
    return [f"CPT ({check.get('steps')} steps): {len(beat)} of {len(bodies)} pre-trained bodies "
            f"beat the untrained body beyond the interval ({', '.join(beat)})"
            + ("" if len(beat) == len(bodies) else
               f"; {', '.join(v for v in bodies if v not in beat)} do not") + "."]


def _plasticity(ev: dict) -> list[str]:
    plast = ev.get("plasticity", {})
    if not plast:
        return []
    best = min((p["auc"]["value"], v) for v, p in plast.items() if v != REFERENCE)
    line = (f"Plasticity (mean bits/byte over the adaptation curve on unseen sources, lower = "
            f"adapts faster): lowest is {best[1]} ({_iv(plast[best[1]]['auc'], '.3f', '')})")
    vs = [f"{v} {p['verdict']}" for v, p in plast.items() if "verdict" in p]
    if vs:
        line += "; against the untrained body: " + ", ".join(vs)
    if BASELINE in plast and best[1] != BASELINE:
        line += f"; STD scores {_iv(plast[BASELINE]['auc'], '.3f', '')}"
    return [line + "."]


def _who(rows: dict, key: str, word: str) -> list[str]:
    return [v for v, r in rows.items() if (r.get(key) or {}).get("verdict") == word]


def _beats(name: str, rows: dict, extra: str = "") -> str:
    """One sentence: which bodies beat the untrained one, and which beat STD's, beyond the
    paired interval (the rest: not distinguishable, or worse)."""
    bodies = {v: r for v, r in rows.items() if v != REFERENCE and "vs_untrained" in r}
    if not bodies:
        return ""
    up = _who(bodies, "vs_untrained", "better")
    line = (f"{name}: {len(up)} of {len(bodies)} pre-trained bodies beat the untrained body "
            f"beyond the paired interval ({', '.join(up) or 'none'})")
    vs = {v: r for v, r in bodies.items() if "vs_std" in r}
    if vs:
        better, worse = _who(vs, "vs_std", "better"), _who(vs, "vs_std", "worse")
        line += (f"; against STD's body: better {', '.join(better) or 'none'}, worse "
                 f"{', '.join(worse) or 'none'}, the rest not distinguishable")
    return line + extra + "."


def _bodies(ev: dict) -> list[str]:
    out = []
    probe = ev["tables"].get("probe", {})
    if probe:
        rows = {v: {"vs_untrained": r["id"].get("vs_untrained"),
                    **({"vs_std": {"verdict": r["id"]["verdict"]}} if "verdict" in r["id"]
                       else {})} for v, r in probe.items() if "id" in r}
        edges = [v for v, c in ev.get("probe_choices", {}).items() if c["at_grid_edge"]]
        out.append(_beats("Frozen-body probe (test bits/byte in distribution; only a fresh "
                          "embedding trains)", rows,
                          f"; rate at the edge of its grid for {', '.join(edges)}" if edges
                          else "; every chosen rate lies inside its grid"))
    ds = ev.get("downstream", {}).get("protocols", {})
    for proto, table in ds.items():
        bow = table.get("bag_of_words", {}).get("accuracy", {}).get("value")
        best = max(((r["accuracy"]["value"], v) for v, r in table.items()
                    if v not in ("majority", "bag_of_words", REFERENCE)), default=None)
        extra = (f"; best body {best[1]} {best[0]:.3f} = {best[0] / bow:.0%} of the "
                 f"bag-of-words ceiling {bow:.3f}" if best and bow else "")
        out.append(_beats(f"Downstream, {PROTOCOL_DS[proto]}", table, extra))
    zs = ev.get("zero_shot", {}).get("protocols", {})
    for proto, p in zs.items():
        out.append(_beats(f"Zero-shot minimal pairs, {PROTOCOL_ZS[proto]} (chance "
                          f"{ev['zero_shot']['chance']:.2f})", p["rows"]))
    curve = ev.get("cpt_curve", {})
    if curve:
        gaps = {v: (pts[0].get("vs_untrained"), pts[-1].get("vs_untrained"))
                for v, pts in curve["variants"].items() if pts[0].get("vs_untrained")}
        if gaps:
            out.append(f"CPT validation curve, untrained − body from step {curve['steps'][0]} "
                       f"to {curve['steps'][-1]}: " + "; ".join(
                           f"{v} {a['value']:+.3f} → {b['value']:+.3f} ({b['verdict']})"
                           for v, (a, b) in gaps.items()) + ".")
    return [line for line in out if line]


PROTOCOL_DS = {"as_trained": "fine-tuned as trained", "after_cpt": "fine-tuned after CPT",
               "frozen_probe": "linear head on the frozen body"}
PROTOCOL_ZS = {"as_trained": "as trained", "after_cpt": "after CPT",
               "probe": "frozen body with the probe's embedding"}
