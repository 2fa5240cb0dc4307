"""A fault-injection hook for the kill -9 tests (tests/test_faults.py). Inert by default.

    DEPT_FAULT_KILL_AT=<point>[@<n>]   the process SIGKILLs itself the n-th time (default 1st)
                                       it reaches the named point

Points (each is a moment where a crash must not lose finished work or leave a corrupt file
where a later stage reads it):
    commit:<dir>       atomic_dir has written the new tree, before the rename (prepared,
                       tokenizers, models)
    spm:<name>         a SentencePiece model has been trained (tokenizer stage, e.g. spm:global)
    source-trained     one source finished its local steps, mid-round (before aggregation)
    checkpoint-write   a round's tensors are on disk, its JSON and latest.json not yet
    mlflow-log         a round's metric batch is about to be sent to MLflow

Without the variable, `point()` is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "DEPT_FAULT_KILL_AT"
_hits: dict[str, int] = {}


def point(name: str) -> None:
    target = os.environ.get(ENV)
    if not target:
        return
    want, _, nth = target.partition("@")
    if want != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
