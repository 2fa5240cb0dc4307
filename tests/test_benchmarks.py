"""The benchmark scripts still run against the current dept_core (at their smallest sizes).

They print figures rather than assert them (speed is measured, not tested), but a script that
no longer starts is a broken promise of the README's benchmark section: `throughput.py` (and `mfu.py`, which builds on it) and
`scaling.py` did, unnoticed, after dept_core's data and vocabulary checks changed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{script} {' '.join(args)} failed:\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_throughput_runs_a_dept_round_and_the_bare_loop():
    out = run("throughput.py", "--size", "tiny", "--steps", "2", "--reps", "1", "--vocab", "500")
    assert "DEPT round (run_round)" in out and "ratio DEPT/bare:" in out


def test_scaling_runs_its_smallest_size():
    """N = 2 (the default list's first size): two real-text sources, prepare + tokenizers +
    two rounds; its table row has numbers."""
    out = run("scaling.py", "--sizes", "2", "--variants", "spec")
    rows = [line.split() for line in out.splitlines() if line.split()[:2] == ["2", "spec"]]
    assert len(rows) == 1 and all(float(x) > 0 for x in rows[0][2:]), out


def test_mfu_measures_the_tiny_model():
    out = run("mfu.py", "--sizes", "tiny", "--steps", "2", "--reps", "1")
    assert "fp32 matmul peak" in out and any(line.startswith("tiny") for line in out.splitlines())


def test_tokenise_builds_stores_and_extrapolates_every_preset():
    out = run("tokenise.py", "--reps", "1", "--vocab", "2000")
    assert "MB/s" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("paper-")]
    assert [r[0] for r in rows] == ["paper-125m", "paper-350m", "paper-1.3b", "paper-pile-350m"]
    assert all(float(x) > 0 for r in rows for x in r[1:]), out
