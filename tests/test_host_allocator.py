"""The CPU inner loop's host allocator (dept_core.accel.tune_host_allocator): tensors the size
of a batch's logits come from reused heap memory instead of a fresh mmap each time.

Checked by what it changes (minor page faults for a repeated 48 MB allocation, counted by the
kernel), not by time: speed is measured in benchmarks/throughput.py, not asserted here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dept_core.accel import allocator_thresholds

REPO = Path(__file__).resolve().parents[1]
MiB = 1 << 20

CHURN = r"""
import json, resource, sys
import torch
from dept_core.accel import tune_host_allocator
from dept_core.config_io import validate
cfg = validate(json.loads(sys.argv[1]))
tuned = tune_host_allocator(cfg)
again = tune_host_allocator(cfg)  # once per process: the same answer
def churn(n):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        t = torch.ones(12_000_000)  # 48 MB: above glibc's own 32 MiB ceiling for its threshold
        del t
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
churn(30)  # the heap settles (glibc still trims during the first ~10)
faults = churn(10)
print("RESULT " + json.dumps({"tuned": tuned, "again": again, "faults": faults}))
"""


def churn(raw: dict, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "DEPT_HOST_ALLOCATOR")}
    out = subprocess.run([sys.executable, "-c", CHURN, json.dumps(raw)], cwd=REPO,
                         env={**clean, **env}, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_thresholds_follow_the_logits_of_the_largest_batch(tiny_cfg):
    # tiny: 3 x 32 sequences x 64 x 1000 pieces x 4 B = 24.6 MB -> the 64 MiB floor
    assert allocator_thresholds(tiny_cfg) == (64 * MiB, 256 * MiB)

    def cfg(**train):
        return tiny_cfg.model_copy(update={
            "train": tiny_cfg.train.model_copy(update=train),
            "tokenizers": tiny_cfg.tokenizers.model_copy(update={"global_vocab_size": 6000})})

    # the demo: STD's and CPT's batch, 6 x 8 sequences x 128 x 6000 x 4 B = 147 MB -> 256 MiB
    assert allocator_thresholds(cfg(batch_size=8, seq_len=128, sources_per_round=6)) == (
        256 * MiB, 1024 * MiB)
    # one source a round: the evaluation batch (16 windows, 49 MB) is the largest -> 64 MiB
    assert allocator_thresholds(cfg(batch_size=8, seq_len=128, sources_per_round=1)) == (
        64 * MiB, 256 * MiB)
    assert allocator_thresholds(cfg(batch_size=8, seq_len=4096, sources_per_round=6)) == (
        1024 * MiB, 4096 * MiB)  # capped


def test_tuned_allocator_reuses_memory_and_respects_the_users_choice(tiny_raw):
    tuned = churn(tiny_raw)
    assert tuned["tuned"] == {"mmap_threshold": 64 * MiB, "trim_threshold": 256 * MiB}
    assert tuned["again"] == tuned["tuned"]
    plain = churn(tiny_raw, DEPT_HOST_ALLOCATOR="default")
    assert plain["tuned"] is None
    # glibc's default: ten fresh mmaps of 48 MB, each faulted in (~11.7 k pages apiece)
    assert plain["faults"] > 100_000, plain
    assert tuned["faults"] * 5 < plain["faults"], (tuned, plain)
    # a user's own allocator settings win: nothing is changed
    assert churn(tiny_raw, MALLOC_ARENA_MAX="2", MALLOC_TRIM_THRESHOLD_="1000000")["tuned"] is None
