"""A full disk: one clear error naming the file, how much is free and what the stage needs.

Every output is written to a temporary sibling and renamed into place (`dept_core.atomic`),
so a write that runs out of space leaves the previous output as it was; the writers turn the
OS error (ENOSPC, EDQUOT, SQLite's "database or disk is full") into `DiskFull`, whose message
names the file being written, the free space on its file system and this stage's expected
output size (`expect`, set by the stage). The command line prints that one line, saves the
traceback to a log file outside the project and exits non-zero; the same command resumes
once space is back (finished rounds are checkpointed).
"""

from __future__ import annotations

import errno
import shutil
import sqlite3
from pathlib import Path

from dept_core.errors import DeptError

FULL = (errno.ENOSPC, errno.EDQUOT)
_expected: int | None = None


def expect(n_bytes: int | None) -> None:
    """This stage writes about `n_bytes` (for the error message)."""
    global _expected
    _expected = n_bytes


def expect_at_least(n_bytes: int) -> None:
    """Raise the estimate to `n_bytes` if it is lower (or unset)."""
    expect(max(n_bytes, _expected or 0))


def human(n: float | None) -> str:
    if n is None:
        return "an unknown amount"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def free_bytes(path: Path) -> int | None:
    p = Path(path).absolute()
    for candidate in (p, *p.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def is_full(exc: BaseException) -> bool:
    """The error (or one it was raised from) is a full disk or quota."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DiskFull):
            return True
        if isinstance(exc, OSError) and exc.errno in FULL:
            return True
        if isinstance(exc, sqlite3.OperationalError) and "disk is full" in str(exc):
            return True
        if "database or disk is full" in str(exc) or "No space left on device" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class DiskFull(DeptError):
    """No space left while writing `path`."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        super().__init__(f"no space left on device while writing {self.path} "
                         f"({human(free_bytes(self.path))} free; this stage writes about "
                         f"{human(_expected)})")


def raise_if_full(exc: BaseException, path: Path | str) -> None:
    """Re-raise a full-disk error as `DiskFull(path)` (anything else: unchanged)."""
    if isinstance(exc, DiskFull):
        raise exc
    if is_full(exc):
        raise DiskFull(path) from exc
