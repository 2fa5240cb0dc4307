"""How sure a comparison is: paired bootstrap intervals over documents (and seeds).

Every variant is scored on exactly the same documents (bits per UTF-8 byte does not depend
on the tokenizer), so differences are **paired**: one bootstrap replicate resamples each
source's test documents once (with replacement) and every variant is re-scored on that same
resample; with several training seeds, each replicate also resamples the seeds (the same
seeds for every variant: seed s of every variant starts from the same initial body). The
interval of any statistic — a variant's mean bits/byte, its "% vs STD", its ratio to the
unigram yardstick — is the 2.5th..97.5th percentile of that statistic over the replicates.

Estimates (never resampled): a source's bits/byte is Σ_d loss_d / (ln 2 · Σ_d bytes_d) over
its documents d; a variant's mean is the unweighted mean over the sources every variant has,
averaged over seeds. Pure numpy, tested with hand-built numbers in tests/test_stats.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LN2 = math.log(2)
#: per variant -> per seed -> per source: each document's summed loss (nats)
Losses = dict[str, dict[int, dict[str, np.ndarray]]]


@dataclass
class Interval:
    value: float
    low: float
    high: float

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high

    def as_dict(self) -> dict:
        return {"value": self.value, "low": self.low, "high": self.high}


def percentile_interval(value: float, replicates: np.ndarray, level: float = 0.95) -> Interval:
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return Interval(float(value), float(low), float(high))


class PairedBootstrap:
    """Replicates of per-variant mean bits/byte over `sources`, paired across variants.

    `losses[v][seed][source]` are per-document losses in nats; `doc_bytes[source]` the
    documents' UTF-8 bytes (the same documents, in the same order, for every variant and
    seed). `reference` (optional) adds a deterministic per-document yardstick (the unigram
    model) scored on the same resamples.
    """

    def __init__(self, losses: Losses, doc_bytes: dict[str, np.ndarray], sources: list[str],
                 n: int = 2000, seed: int = 0,
                 reference: dict[str, np.ndarray] | None = None):
        self.variants = list(losses)
        self.seeds = sorted(set.intersection(*(set(by_seed) for by_seed in losses.values())))
        if not self.seeds:
            raise ValueError("no training seed is shared by every variant")
        self.sources, self.n = list(sources), n
        rng = np.random.default_rng(seed)
        idx = {s: rng.integers(0, len(doc_bytes[s]), (n, len(doc_bytes[s])))
               for s in self.sources}
        # seeds resampled too when there are several (the same draw for every variant)
        self.seed_draw = rng.integers(0, len(self.seeds), (n, len(self.seeds))) \
            if len(self.seeds) > 1 else np.zeros((n, 1), dtype=int)
        byte_sums = {s: np.asarray(doc_bytes[s], dtype=np.float64)[idx[s]].sum(1)
                     for s in self.sources}
        self.point: dict[str, float] = {}
        self.reps: dict[str, np.ndarray] = {}
        for v in self.variants:
            per_seed_point, per_seed_reps = [], []
            for sd in self.seeds:
                arrays = {s: np.asarray(losses[v][sd][s], dtype=np.float64)
                          for s in self.sources}
                per_seed_point.append(np.mean([
                    arrays[s].sum() / (LN2 * np.sum(doc_bytes[s])) for s in self.sources]))
                per_seed_reps.append(np.mean([
                    arrays[s][idx[s]].sum(1) / (LN2 * byte_sums[s]) for s in self.sources],
                    axis=0))
            reps = np.stack(per_seed_reps, axis=1)               # (n, seeds)
            self.point[v] = float(np.mean(per_seed_point))
            self.reps[v] = np.take_along_axis(reps, self.seed_draw, axis=1).mean(1)
        self.ref_point, self.ref_reps = None, None
        if reference is not None:
            arrays = {s: np.asarray(reference[s], dtype=np.float64) for s in self.sources}
            self.ref_point = float(np.mean([
                arrays[s].sum() / (LN2 * np.sum(doc_bytes[s])) for s in self.sources]))
            self.ref_reps = np.mean([arrays[s][idx[s]].sum(1) / (LN2 * byte_sums[s])
                                     for s in self.sources], axis=0)

    def mean(self, v: str) -> Interval:
        """The variant's mean bits/byte."""
        return percentile_interval(self.point[v], self.reps[v])

    def pct_vs(self, v: str, base: str) -> Interval:
        """How much lower (better) v is than `base`, in % of base: 100·(base − v)/base."""
        point = 100 * (self.point[base] - self.point[v]) / self.point[base]
        reps = 100 * (self.reps[base] - self.reps[v]) / self.reps[base]
        return percentile_interval(point, reps)

    def diff(self, v: str, base: str) -> Interval:
        """base − v in bits/byte (> 0: v is better)."""
        return percentile_interval(self.point[base] - self.point[v],
                                   self.reps[base] - self.reps[v])

    def ratio_to_reference(self, v: str) -> Interval:
        """v's bits/byte divided by the yardstick's on the same documents."""
        if self.ref_reps is None:
            raise ValueError("no reference yardstick was given")
        return percentile_interval(self.point[v] / self.ref_point, self.reps[v] / self.ref_reps)


def standard_error_pct(losses: np.ndarray, doc_bytes: np.ndarray, n: int = 2000,
                       seed: int = 0) -> float:
    """The bootstrap standard error of one source's bits/byte, in % of it (documents
    resampled): how precisely a test split of this size pins a single number down."""
    rng = np.random.default_rng(seed)
    losses, doc_bytes = np.asarray(losses, float), np.asarray(doc_bytes, float)
    idx = rng.integers(0, len(losses), (n, len(losses)))
    reps = losses[idx].sum(1) / doc_bytes[idx].sum(1)
    return float(100 * reps.std(ddof=1) / (losses.sum() / doc_bytes.sum()))


def proportion_interval(correct: dict[str, list[int]], n: int = 2000, seed: int = 0
                        ) -> tuple[dict[str, Interval], dict[str, np.ndarray]]:
    """Accuracy per variant with paired bootstrap replicates over test examples (the same
    examples, in the same order, for every variant)."""
    arrays = {v: np.asarray(c, dtype=np.float64) for v, c in correct.items()}
    size = len(next(iter(arrays.values())))
    idx = np.random.default_rng(seed).integers(0, size, (n, size))
    reps = {v: a[idx].mean(1) for v, a in arrays.items()}
    return {v: percentile_interval(float(a.mean()), reps[v]) for v, a in arrays.items()}, reps


def seed_interval(values: list[float], n: int = 2000, seed: int = 0) -> Interval | None:
    """Mean over seeds with a bootstrap interval over seeds (None with a single seed)."""
    if len(values) < 2:
        return None
    a = np.asarray(values, dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, len(a), (n, len(a)))
    return percentile_interval(float(a.mean()), a[idx].mean(1))


def verdict_word(interval: Interval) -> str:
    """For an interval of "how much better than the baseline" (> 0: better)."""
    if interval.contains(0.0):
        return "not distinguishable"
    return "better" if interval.low > 0 else "worse"


def _seed_draw(rng: np.random.Generator, n: int, n_seeds: int) -> np.ndarray:
    return rng.integers(0, n_seeds, (n, n_seeds)) if n_seeds > 1 \
        else np.zeros((n, 1), dtype=int)


def paired_accuracy(correct: dict[str, dict[int, list[int]]], n: int = 2000, seed: int = 0
                    ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Accuracy per variant (mean over the seeds every variant has) and paired replicates:
    test examples (the same for every variant) and seeds resampled together."""
    seeds = sorted(set.intersection(*(set(c) for c in correct.values())))
    rng = np.random.default_rng(seed)
    size = len(next(iter(correct.values()))[seeds[0]])
    idx = rng.integers(0, size, (n, size))
    draw = _seed_draw(rng, n, len(seeds))
    point, reps = {}, {}
    for v, by_seed in correct.items():
        arrays = np.stack([np.asarray(by_seed[s], dtype=np.float64) for s in seeds])  # (S, m)
        point[v] = float(arrays.mean())
        per_seed = np.stack([a[idx].mean(1) for a in arrays], axis=1)               # (n, S)
        reps[v] = np.take_along_axis(per_seed, draw, axis=1).mean(1)
    return point, reps


def curve_auc_bootstrap(curves: dict[str, dict[int, dict[str, dict]]], n: int = 2000,
                        seed: int = 0) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Plasticity: the trapezoidal mean of a bits/byte curve (`metrics.area_under_curve`),
    averaged over unseen sources and seeds, with paired replicates (each source's validation
    documents and the seeds resampled once, for every variant and every curve point alike).

    `curves[v][seed][source]` = {"steps": [...], "loss": (points × docs) nats, "bytes": docs}.
    """
    seeds = sorted(set.intersection(*(set(c) for c in curves.values())))
    first = next(iter(curves.values()))[seeds[0]]
    sources = sorted(set.intersection(*(set(c[s]) for c in curves.values() for s in seeds)))
    rng = np.random.default_rng(seed)
    idx = {src: rng.integers(0, len(first[src]["bytes"]), (n, len(first[src]["bytes"])))
           for src in sources}
    draw = _seed_draw(rng, n, len(seeds))

    def auc(values: np.ndarray, steps: np.ndarray) -> np.ndarray:  # values (..., points)
        widths = np.diff(steps)
        area = ((values[..., 1:] + values[..., :-1]) / 2 * widths).sum(-1)
        return area / (steps[-1] - steps[0]) if len(steps) > 1 else values[..., 0]

    point, reps = {}, {}
    for v, by_seed in curves.items():
        seed_points, seed_reps = [], []
        for s in seeds:
            src_points, src_reps = [], []
            for src in sources:
                c = by_seed[s][src]
                loss = np.asarray(c["loss"], dtype=np.float64)          # (points, docs)
                b = np.asarray(c["bytes"], dtype=np.float64)
                steps = np.asarray(c["steps"], dtype=np.float64)
                src_points.append(auc(loss.sum(1) / (LN2 * b.sum()), steps))
                resampled = loss[:, idx[src]].sum(-1) / (LN2 * b[idx[src]].sum(1))  # (pts, n)
                src_reps.append(auc(resampled.T, steps))
            seed_points.append(np.mean(src_points))
            seed_reps.append(np.mean(src_reps, axis=0))
        point[v] = float(np.mean(seed_points))
        reps[v] = np.take_along_axis(np.stack(seed_reps, axis=1), draw, axis=1).mean(1)
    return point, reps
