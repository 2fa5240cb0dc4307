"""Every evaluation metric, as plain functions of counts (unit-tested against hand-computed
values in tests/test_metrics.py).

Language modelling (paper §4, "Evaluation"): perplexity is per token of the model's own
tokenizer, so it compares models only when they share a tokenizer; bits per UTF-8 byte
divides the same summed loss by the text's bytes and so compares across tokenizers and
variants (SPEC-OPT has its own tokenizers). Downstream: accuracy and macro-F1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

LN2 = math.log(2)


def perplexity(loss_sum_nats: float, n_tokens: int) -> float:
    """exp(mean nats per token); capped at exp(50) so a diverged model stays printable."""
    return math.exp(min(loss_sum_nats / max(n_tokens, 1), 50.0))


def bits_per_byte(loss_sum_nats: float, n_bytes: int) -> float:
    """Summed next-token loss (nats) over the text, in bits, per UTF-8 byte of the text."""
    return loss_sum_nats / (LN2 * max(n_bytes, 1))


def improvement_pct(baseline: float, value: float) -> float:
    """How much lower (better) `value` is than `baseline`, in % of the baseline."""
    return 100.0 * (baseline - value) / baseline


def accuracy(pred: Sequence, gold: Sequence) -> float:
    if len(pred) != len(gold) or not gold:
        raise ValueError(f"accuracy: {len(pred)} predictions for {len(gold)} labels")
    return sum(p == g for p, g in zip(pred, gold)) / len(gold)


def macro_f1(pred: Sequence, gold: Sequence) -> float:
    """Unweighted mean of per-class F1 over every class that occurs in `gold` or `pred`
    (a class never predicted correctly scores 0), as scikit-learn's `average="macro"`."""
    if len(pred) != len(gold) or not gold:
        raise ValueError(f"macro_f1: {len(pred)} predictions for {len(gold)} labels")
    scores = []
    for c in sorted(set(gold) | set(pred), key=str):
        tp = sum(p == c and g == c for p, g in zip(pred, gold))
        fp = sum(p == c and g != c for p, g in zip(pred, gold))
        fn = sum(p != c and g == c for p, g in zip(pred, gold))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores)


def mean(values: Sequence[float]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def area_under_curve(steps: Sequence[float], values: Sequence[float]) -> float:
    """Trapezoidal mean of a curve over its step range (plasticity: lower = adapts faster)."""
    if len(steps) < 2:
        return float(values[0]) if values else float("nan")
    area = sum((steps[i + 1] - steps[i]) * (values[i] + values[i + 1]) / 2
               for i in range(len(steps) - 1))
    return area / (steps[-1] - steps[0])


def complete_mean(val: dict, sources) -> float | None:
    """Mean validation bits/byte over `sources`, only when every one was evaluated (a SPEC
    source never trained yet has no embeddings): a mean over fewer sources would compare
    unlike with like."""
    if not val or set(sources) - set(val):
        return None
    return sum(val[k]["bpb"] for k in sources) / len(sources)


def round_metrics(record: dict, cumulative: dict, sources: list[str]) -> dict[str, float]:
    """One round's record as flat MLflow-style metric names."""
    out = {f"train_loss/{k}": v for k, v in record["train_loss"].items()}
    if "tokens_per_s" in record:  # (a replay from a metrics.json without its timings.json)
        out["tokens_per_s"] = record["tokens_per_s"]
    out["comm/bytes_down"] = record["comm"]["down"]
    out["comm/bytes_up"] = record["comm"]["up"]
    out["comm/cumulative_bytes"] = cumulative["bytes_down_total"] + cumulative["bytes_up_total"]
    for comp, v in record["comm"]["components"].items():
        out[f"comm/{comp}_bytes"] = v["down"] + v["up"]
    for k, v in record.get("val", {}).items():
        out[f"val_loss/{k}"], out[f"val_bpb/{k}"] = v["loss"], v["bpb"]
    mean = complete_mean(record.get("val", {}), sources)
    if mean is not None:
        out["val_bpb_mean"] = mean
    return out


#: per-round wall-clock fields: they differ between two runs of the same command
TIMING_KEYS = ("seconds", "tokens_per_s")


def split_timings(metrics: dict) -> tuple[dict, dict]:
    """(metrics without wall times, the wall times per round): `metrics.json` then holds only
    what the same command reproduces bit for bit (and DVC's hash of it stays put); the wall
    times go to `timings.json` beside it (ignored by git and by DVC's hashing)."""
    history = [{k: v for k, v in r.items() if k not in TIMING_KEYS}
               for r in metrics.get("history", [])]
    rounds = [{"round": r["round"], **{k: r[k] for k in TIMING_KEYS if k in r}}
              for r in metrics.get("history", [])]
    return {**metrics, "history": history}, {"rounds": rounds}


def join_timings(metrics: dict, timings: dict | None) -> dict:
    """`metrics.json` with its rounds' wall times put back (for replaying a run's curves)."""
    by_round = {t["round"]: t for t in (timings or {}).get("rounds", [])}
    return {**metrics, "history": [{**r, **{k: v for k, v in by_round.get(r["round"], {}).items()
                                             if k != "round"}} for r in metrics["history"]]}
