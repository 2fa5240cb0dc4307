"""Communication bytes per variant, counted by the ledger, against the paper's Table 1 formula.

    python benchmarks/comm_table1.py

Builds the smoke project (3 sources), runs every variant for 2 rounds (1 local step: the bytes
do not depend on N_local for DEPT) with a RoPE model (no positional table) and a GPT-2 model
(learned positions, the L·d term of Table 1), and prints measured bytes per round next to
`policies.table1_bytes_per_round` (paper Table 1: GLOB O(M), TRIM O(M − (|V|−|V_k|)·d),
SPEC O(M − (|V|+L)·d) per source and direction, per round = per N_local steps).
STD is data-parallel training: 2·M·4 bytes per worker per step.
"""

from __future__ import annotations

from common import build_project, smoke_raw

from dept_core import variants
from dept_core.config_io import validate
from dept_core.layout import PREPARED, TOKENIZERS
from dept_core.model import numel
from dept_core.run import train_variant


def main() -> None:
    _, root = build_project(smoke_raw())
    print(f"{'family':7s} {'variant':9s} {'round':>5s} {'sources':10s} {'ledger bytes':>13s} "
          f"{'Table 1 bytes':>13s}  equal")
    all_equal = True
    for family in ("llama", "gpt2"):
        raw = smoke_raw(rounds=2, local_steps=1, eval_every=100)
        raw["model"]["family"] = family
        cfg = validate(raw)
        for variant in variants.names():
            res, data = train_variant(cfg, variant, root / PREPARED, root / TOKENIZERS, None)
            m = res.metrics
            for h, measured in zip(m["history"], m["comm"]["per_round"]):
                got = measured["down"] + measured["up"]
                if variants.get(variant).centralised:
                    full = numel(res.body) + numel(res.global_bank)
                    want = 2 * full * 4 * cfg.train.sources_per_round * cfg.train.local_steps
                else:
                    want = m["comm"]["table1_per_round"][h["round"] - 1]
                all_equal &= got == want
                print(f"{family:7s} {variant:9s} {h['round']:5d} {','.join(h['sources']):10s} "
                      f"{got:13d} {want:13d}  {'yes' if got == want else 'NO'}")
    print("all equal" if all_equal else "MISMATCH")


if __name__ == "__main__":
    main()
