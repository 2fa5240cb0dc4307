"""A fault-injection hook for the kill -9 tests (tests/test_faults.py). Inert by default.

    DEPT_FAULT_KILL_AT=<point>[@<n>]   the process SIGKILLs itself the n-th time (default 1st)
                                       it reaches the named point
    DEPT_FAULT_SIGNAL_AT=<point>[@<n>][:TERM]  SIGINT (or SIGTERM) to the process's whole
                                       group there, as a terminal's Ctrl-C sends it

Points (each is a moment where a crash must not lose finished work or leave a corrupt file
where a later stage reads it):
    commit:<dir>       atomic_dir has written the new tree, before the rename (prepared,
                       tokenizers, models)
    spm:<name>         a SentencePiece model has been trained (tokenizer stage, e.g. spm:global)
    source-trained     one source finished its local steps, mid-round (before aggregation)
    checkpoint-write   a round's tensors are on disk, its JSON and latest.json not yet
    mlflow-log         a round's metric batch is about to be sent to MLflow

    DEPT_FAULT_ENOSPC_AT=<site>[@<n>]  a write raises ENOSPC ("No space left on device") the
                                       n-th time it reaches the named site

Write sites (tests/test_disk_full.py): `checkpoint` (a round's tensors), `models` (the
export), `mlflow-artifact`, `compare` (the report), `prepared`, `tokenizers` — the last four
are directories written by `atomic_dir`, whose name is the site.

Without the variables, `point()` and `no_space()` are one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "DEPT_FAULT_KILL_AT"
_hits: dict[str, int] = {}


def point(name: str) -> None:
    for env, act in ((ENV, _kill), (SIGNAL, _signal_group)):
        target = os.environ.get(env)
        if not target:
            continue
        how = ""  # (point names contain ':' themselves: only a known suffix is split off)
        if target.endswith((":TERM", ":INT")):
            target, _, how = target.rpartition(":")
        want, _, nth = target.partition("@")
        if want != name:
            continue
        key = f"{env}:{name}"
        _hits[key] = _hits.get(key, 0) + 1
        if _hits[key] == int(nth or 1):
            act(how)


def _kill(_: str) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _signal_group(how: str) -> None:
    """What a terminal's Ctrl-C (or `kill -TERM -PGID`) does: the signal to a whole process
    group — the terminal's job (`DEPT_FAULT_SIGNAL_PGID`, set by the test that started it),
    else this process's group."""
    pgid = int(os.environ.get("DEPT_FAULT_SIGNAL_PGID") or os.getpgrp())
    os.killpg(pgid, signal.SIGTERM if how == "TERM" else signal.SIGINT)


SIGNAL = "DEPT_FAULT_SIGNAL_AT"


NO_SPACE = "DEPT_FAULT_ENOSPC_AT"
_writes: dict[str, int] = {}


def no_space(site: str) -> None:
    """Raise OSError(ENOSPC) at write site `site` when DEPT_FAULT_ENOSPC_AT names it."""
    target = os.environ.get(NO_SPACE)
    if not target:
        return
    want, _, nth = target.partition("@")
    if want != site:
        return
    _writes[site] = _writes.get(site, 0) + 1
    if _writes[site] == int(nth or 1):
        import errno

        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
