#!/usr/bin/env bash
# The prepared GPU check (benchmarks/gpu_check.py): environment, the 125M preset's inner loop
# with compile off and on (tokens/s, MFU, peak memory against the estimate), the 2-rank
# torchrun backend. At most ~8 minutes on one 80 GB GPU; `--dry-run` runs it at toy size on
# a CPU (the test suite does, so the script cannot rot between GPU loans).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
exec timeout 480 "$PY" benchmarks/gpu_check.py "$@"
