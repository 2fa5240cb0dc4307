"""Paired bootstrap intervals on hand-built per-document numbers (dept_core.stats)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dept_core import stats

LN2 = math.log(2)


def _bits(x):  # nats that are x bits
    return np.asarray(x, dtype=float) * LN2


def test_point_estimates_are_byte_weighted_source_means_then_source_averages():
    # source a: two docs of 10 and 30 bytes with 10 and 90 bits -> (10 + 90)/40 = 2.5 bpb;
    # source b: one doc, 20 bytes, 20 bits -> 1.0. Mean over sources: 1.75
    losses = {"std": {0: {"a": _bits([10, 90]), "b": _bits([20])}}}
    boot = stats.PairedBootstrap(losses, {"a": np.array([10, 30]), "b": np.array([20])},
                                 ["a", "b"], n=200)
    assert boot.point["std"] == pytest.approx(1.75)
    iv = boot.mean("std")
    assert iv.low <= 1.75 <= iv.high
    # the resampled means range over {1, 3} for a's single-document resamples: (1+1)/2, (3+1)/2
    assert iv.low >= 1.0 - 1e-12 and iv.high <= 2.0 + 1e-12


def test_a_constant_shift_on_every_document_has_a_degenerate_paired_interval():
    """v is 10 % better than STD on every document: whatever the resample, +10.0 %."""
    rng = np.random.default_rng(1)
    std = rng.uniform(50, 150, size=40)
    b = np.full(40, 20.0)
    losses = {"std": {0: {"a": std}}, "v": {0: {"a": 0.9 * std}}}
    boot = stats.PairedBootstrap(losses, {"a": b}, ["a"], n=500)
    iv = boot.pct_vs("v", "std")
    assert iv.value == pytest.approx(10.0)
    assert iv.low == pytest.approx(10.0) and iv.high == pytest.approx(10.0)
    assert stats.verdict_word(iv) == "better"
    # unpaired, the same two sets of numbers would give wide, overlapping intervals
    assert boot.mean("v").high > boot.mean("std").low


def test_noise_around_zero_is_not_distinguishable():
    """Half the documents favour v by 1 bit, half favour STD by 1 bit: the interval of
    the difference contains 0, and the verdict says so."""
    base = np.full(20, 100.0)
    signs = np.array([1, -1] * 10)
    losses = {"std": {0: {"a": _bits(base)}}, "v": {0: {"a": _bits(base + signs)}}}
    boot = stats.PairedBootstrap(losses, {"a": np.full(20, 50.0)}, ["a"], n=1000)
    iv = boot.pct_vs("v", "std")
    assert iv.value == pytest.approx(0.0)
    assert iv.low < 0 < iv.high
    assert stats.verdict_word(iv) == "not distinguishable"
    assert stats.verdict_word(stats.Interval(-3.0, -5.0, -1.0)) == "worse"


def test_seeds_are_averaged_and_resampled_with_the_documents():
    # two seeds; v is 2 bits/byte at seed 0 and 4 at seed 1 on every doc -> mean 3.
    b = np.full(5, 10.0)
    losses = {"std": {0: {"a": _bits(np.full(5, 30.0))}, 1: {"a": _bits(np.full(5, 30.0))}},
              "v": {0: {"a": _bits(np.full(5, 20.0))}, 1: {"a": _bits(np.full(5, 40.0))}}}
    boot = stats.PairedBootstrap(losses, {"a": b}, ["a"], n=400)
    assert boot.point["v"] == pytest.approx(3.0) and boot.point["std"] == pytest.approx(3.0)
    iv = boot.mean("v")
    # replicates draw seeds with replacement: {0,0} -> 2, {0,1} -> 3, {1,1} -> 4
    assert iv.low == pytest.approx(2.0) and iv.high == pytest.approx(4.0)
    assert stats.verdict_word(boot.pct_vs("v", "std")) == "not distinguishable"


def test_only_seeds_every_variant_has_are_used():
    b = {"a": np.full(3, 10.0)}
    losses = {"std": {0: {"a": _bits([10, 10, 10])}, 1: {"a": _bits([99, 99, 99])}},
              "v": {0: {"a": _bits([5, 5, 5])}}}
    boot = stats.PairedBootstrap(losses, b, ["a"], n=100)
    assert boot.seeds == [0] and boot.point["std"] == pytest.approx(1.0)


def test_ratio_to_the_unigram_yardstick_on_the_same_documents():
    b = {"a": np.full(4, 10.0)}
    losses = {"v": {0: {"a": _bits([8, 16, 8, 16])}}}
    boot = stats.PairedBootstrap(losses, b, ["a"], n=300,
                                 reference={"a": _bits([10, 20, 10, 20])})
    iv = boot.ratio_to_reference("v")
    assert iv.value == pytest.approx(0.8) and iv.low == pytest.approx(0.8) \
        and iv.high == pytest.approx(0.8)


def test_accuracy_intervals_and_seed_intervals():
    ivs, reps = stats.proportion_interval({"a": [1, 1, 0, 1], "b": [1, 0, 0, 1]}, n=500)
    assert ivs["a"].value == 0.75 and ivs["b"].value == 0.5
    assert 0 <= ivs["a"].low <= 0.75 <= ivs["a"].high <= 1
    assert (reps["a"] >= reps["b"]).all()  # paired: b is never right where a is wrong
    assert stats.seed_interval([1.0]) is None
    iv = stats.seed_interval([1.0, 3.0], n=400)
    assert iv.value == 2.0 and iv.low == 1.0 and iv.high == 3.0


def test_standard_error_of_one_source():
    assert stats.standard_error_pct(np.full(10, 7.0), np.full(10, 3.0)) == pytest.approx(0.0)
    se = stats.standard_error_pct(np.array([10.0, 30.0] * 50), np.full(100, 10.0))
    # per-doc values 1 and 3 (mean 2, sd 1): SE of the mean 1/sqrt(100) = 0.1 -> 5 %
    assert se == pytest.approx(5.0, rel=0.1)


def test_paired_accuracy_and_curve_auc():
    point, reps = stats.paired_accuracy({"a": {0: [1, 1, 0, 1]}, "b": {0: [1, 0, 0, 1]}}, n=300)
    assert point == {"a": 0.75, "b": 0.5} and (reps["a"] >= reps["b"]).all()
    # a curve of 2 points at steps 0 and 10 over one source with 2 docs of 10 bytes:
    # bits/byte 4 then 2 -> trapezoidal mean 3
    curve = {"steps": [0, 10], "loss": _bits([[40, 40], [20, 20]]), "bytes": [10, 10]}
    point, reps = stats.curve_auc_bootstrap({"v": {0: {"es": curve}}}, n=100)
    assert point["v"] == pytest.approx(3.0) and np.allclose(reps["v"], 3.0)
