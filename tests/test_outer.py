"""The server step on hand-built tensors; expected values are worked out in each test."""

import torch

from dept_core.comm import CommLedger
from dept_core.config import ModelConfig
from dept_core.outer import OuterOptimizer, masked_row_mean, weighted_mean
from dept_core.policies import Spec, Trim, table1_bytes_per_round

T = torch.tensor


def test_uniform_and_weighted_average():
    deltas = [T([1.0, 2.0]), T([3.0, 6.0])]
    assert torch.equal(weighted_mean(deltas, [1, 1]), T([2.0, 4.0]))
    # weights 1:3 -> (1*1 + 3*3)/4 = 2.5 ; (2 + 18)/4 = 5
    assert torch.equal(weighted_mean(deltas, [1, 3]), T([2.5, 5.0]))


def test_fedavg_step_moves_to_the_mean_of_the_local_models():
    theta = T([[1.0, 1.0]])
    locals_ = [T([[2.0, 0.0]]), T([[4.0, 2.0]])]          # mean local model: [3, 1]
    mean = weighted_mean([m - theta for m in locals_], [1, 1])
    OuterOptimizer("avg").step("w", theta, mean)
    assert torch.equal(theta, T([[3.0, 1.0]]))


def test_trim_masked_row_average_one_two_and_no_holders():
    # 4 global rows, d=1. Source a holds rows {0, 1}, source b holds rows {1, 2}; row 3: nobody.
    da, db = T([[2.0], [4.0]]), T([[10.0], [20.0]])
    ia, ib = T([0, 1]), T([1, 2])
    mean, held = masked_row_mean([da, db], [ia, ib], [1.0, 1.0], n_rows=4)
    # row 0: only a -> 2; row 1: (4 + 10)/2 = 7; row 2: only b -> 20; row 3: none -> 0, not held
    assert torch.equal(mean, T([[2.0], [7.0], [20.0], [0.0]]))
    assert held.tolist() == [True, True, True, False]
    # weighted 1:3 -> row 1 = (4*1 + 10*3)/4 = 8.5; single-holder rows are unaffected by weights
    mean, _ = masked_row_mean([da, db], [ia, ib], [1.0, 3.0], n_rows=4)
    assert torch.equal(mean, T([[2.0], [8.5], [20.0], [0.0]]))
    # applying it leaves the unheld row exactly as it was (no pull towards zero)
    table = T([[1.0], [1.0], [1.0], [5.0]])
    OuterOptimizer("avg").step("tok", table, mean, rows=held)
    assert torch.equal(table, T([[3.0], [9.5], [21.0], [5.0]]))


def test_nesterov_outer_step_two_rounds():
    # lr 0.5, mu 0.9. Round 1: mean delta +1 -> g = -1; m = -1; theta -= 0.5*(-1 + 0.9*-1)
    #   = 0 + 0.95 -> 0.95. Round 2: mean delta +2 -> g = -2; m = 0.9*-1 - 2 = -2.9;
    #   update = -2 + 0.9*-2.9 = -4.61; theta = 0.95 + 0.5*4.61 = 3.255
    opt = OuterOptimizer("nesterov", lr=0.5, momentum=0.9)
    theta = T([0.0])
    opt.step("w", theta, T([1.0]))
    assert torch.allclose(theta, T([0.95]))
    opt.step("w", theta, T([2.0]))
    assert torch.allclose(theta, T([3.255]))
    assert torch.allclose(opt.buffers["w"], T([-2.9]))


def test_nesterov_masked_rows_keep_their_momentum():
    opt = OuterOptimizer("nesterov", lr=1.0, momentum=0.5)
    theta = T([[0.0], [0.0]])
    opt.step("tok", theta, T([[1.0], [1.0]]))           # both: g=-1, m=-1, theta=1.5
    opt.step("tok", theta, T([[1.0], [9.0]]), rows=T([True, False]))
    # row 0: m = -0.5 - 1 = -1.5; theta = 1.5 + (1 + 0.75) = 3.25; row 1 untouched
    assert torch.allclose(theta, T([[3.25], [1.5]]))
    assert torch.allclose(opt.buffers["tok"], T([[-1.5], [-1.0]]))


def _policy(cls, ledger):
    mcfg = ModelConfig(size="tiny")
    bank = {"tok": torch.zeros(4, 2)}
    rows = {"a": T([0, 1]), "b": T([1, 2])}
    return cls(mcfg, bank if cls is Trim else None, rows, {"a": 2, "b": 2}, 0, ledger)


def test_spec_banks_never_enter_the_aggregate_or_the_ledger():
    ledger = CommLedger()
    spec = _policy(Spec, ledger)
    first = spec.download(1, "a")
    assert first["tok"].shape == (2, 64)                 # |V_a| x d, created at first sampling
    spec.upload(1, "a", {"tok": first["tok"] + 100.0})
    spec.aggregate({"a": 1.0}, OuterOptimizer("avg"))
    assert spec.bank is None and ledger.records == []    # nothing sent, nothing averaged
    assert torch.equal(spec.eval_bank("a")["tok"], first["tok"] + 100.0)  # kept locally
    assert spec.eval_bank("b") is None                   # never sampled: no bank yet


def test_trim_ledger_counts_only_sub_vocabulary_rows():
    ledger = CommLedger()
    trim = _policy(Trim, ledger)
    got = trim.download(1, "a")
    trim.upload(1, "a", {"tok": got["tok"] + 1.0})
    trim.aggregate({"a": 1.0}, OuterOptimizer("avg"))
    assert ledger.totals()["components"]["tok"] == {"down": 2 * 2 * 4, "up": 2 * 2 * 4}
    assert trim.bank["tok"][:, 0].tolist() == [1.0, 1.0, 0.0, 0.0]


def test_table1_formulas():
    # body 100 params, |V| = 10, d = 2, L = 3 positional rows, sub-vocabularies 4 and 6.
    full = 100 + (10 + 3) * 2                            # M = 126
    assert table1_bytes_per_round("glob", 100, 10, [4, 6], 2, 3) == 2 * 2 * full * 4
    assert table1_bytes_per_round("trim", 100, 10, [4, 6], 2, 3) == \
        2 * 4 * ((full - 6 * 2) + (full - 4 * 2))
    assert table1_bytes_per_round("spec", 100, 10, [4, 6], 2, 3) == 2 * 2 * 100 * 4
