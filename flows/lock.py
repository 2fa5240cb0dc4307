"""One project, one writer at a time.

Every flow that writes a project's outputs — prepare, tokenizers, pretrain, evaluate, the
pipeline, a study — holds the project's lock (`<root>/.dept.lock`) while it runs, whatever
started it: `dept`, a DVC stage, a Prefect deployment. A second writer waits, saying who holds
the lock (pid, command, since when), or, with `dept --no-wait` (`DEPT_NO_WAIT=1`), refuses in
one line. Readers never take it: `dept ui`, `dept compare` (it writes only its own report,
atomically), `dvc metrics show`.

The lock is `filelock`'s (the maintained cross-platform file lock: `flock` on Linux, released
by the kernel when the holder dies, kill -9 included), one instance per path and process
(`is_singleton`), re-entrant across the threads of the holding process (a pipeline's subflows
take it again). Who holds it is written beside it, for the waiting message only.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

LOCK = ".dept.lock"
HOLDER = ".dept.lock.json"


def _command() -> str:
    argv = [os.path.basename(sys.argv[0]) if sys.argv else "python", *sys.argv[1:]]
    text = " ".join(argv)
    return text if len(text) <= 120 else text[:117] + "..."


def describe(root: Path) -> str:
    """Who holds the lock of `root`, as far as its holder file says."""
    try:
        h = json.loads((Path(root) / HOLDER).read_text())
        since = time.strftime("%H:%M:%S", time.localtime(h["since"]))
        return f"pid {h['pid']} on {h['host']} (`{h['command']}`, since {since})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _wait_allowed() -> bool:
    return os.environ.get("DEPT_NO_WAIT", "") in ("", "0")


@contextmanager
def project_lock(root: str | Path) -> Iterator[None]:
    """Hold `root`'s writer lock for the block (waits or refuses, see the module's doc)."""
    from filelock import FileLock, Timeout

    from dept_core import interrupt
    from dept_core.errors import DeptError

    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(root / LOCK, is_singleton=True, thread_local=False)
    outermost = not lock.is_locked
    try:
        lock.acquire(timeout=0)
    except Timeout:
        who = describe(root)
        if not _wait_allowed():
            raise DeptError(f"{root} is in use by {who}; run again when it ends, or without "
                            f"--no-wait to wait for it") from None
        print(f"dept: waiting for {root}: in use by {who}", file=sys.stderr, flush=True)
        while True:  # in short waits, so that Ctrl-C is heard
            interrupt.check()
            try:
                lock.acquire(timeout=0.5)
                break
            except Timeout:
                continue
    try:
        if outermost:
            _write_holder(root)
        yield
    finally:
        if lock.lock_counter == 1:
            (root / HOLDER).unlink(missing_ok=True)
        lock.release()


def _write_holder(root: Path) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(), "command": _command(),
            "since": time.time()}
    tmp = root / f".{HOLDER}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps(info))
        os.replace(tmp, root / HOLDER)
    except OSError:
        tmp.unlink(missing_ok=True)  # only the waiting message needs it (a full disk, ...)


def holds_project(fn):
    """Decorator (under `@flow`) for a flow function with a `root` parameter (None: the working
    directory): the flow body runs holding that project's lock."""
    import functools
    import inspect
    import typing

    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        with project_lock(bound.arguments.get("root") or Path.cwd()):
            return fn(*args, **kwargs)

    # Prefect builds its parameter model from the wrapper; string annotations (PEP 563) would
    # be resolved in this module's namespace, where e.g. `Literal` is not imported, so hand it
    # the annotations already resolved in the flow's own module.
    hints = typing.get_type_hints(fn)
    wrapper.__annotations__ = hints
    wrapper.__signature__ = sig.replace(
        parameters=[p.replace(annotation=hints.get(p.name, p.annotation))
                    for p in sig.parameters.values()],
        return_annotation=hints.get("return", sig.return_annotation))
    return wrapper
