"""Atomic writes: a reader sees the old file/directory or the new one, never a half-written one."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from dept_core import diskspace, faults
from dept_core.errors import DeptError


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temp_beside(path: Path, make):
    """`make(prefix=, suffix=, dir=)` in path's directory; an unwritable one is bad input."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return make(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        diskspace.raise_if_full(exc, path)
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.EEXIST,
                             errno.ENOTDIR):
            raise
        raise DeptError(f"cannot write {path}: {exc.strerror} "
                        f"({exc.filename or path.parent}); the output directory must be "
                        f"writable") from None


@contextmanager
def atomic_file(path: Path, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file beside `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    fd, tmp = _temp_beside(path, tempfile.mkstemp)
    kwargs = {"encoding": "utf-8", "newline": "\n"} if "b" not in mode else {}
    try:
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        diskspace.raise_if_full(exc, path)
        raise


def write_text(path: Path, text: str) -> None:
    with atomic_file(path) as fh:
        fh.write(text)


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory beside `path`; on success it replaces `path`.

    The old directory is kept until the new one is in place, so a crash at any point leaves
    either the complete old tree or the complete new one at `path` (plus, at worst, a stray
    `.name.*.tmp`/`.old` sibling that the next run removes).
    """
    path = Path(path)
    tmp = Path(_temp_beside(path, tempfile.mkdtemp))
    for stray in path.parent.glob(f".{path.name}.*.tmp"):
        if stray != tmp:
            shutil.rmtree(stray, ignore_errors=True)
    try:
        yield tmp
        faults.no_space(path.name)
        faults.point(f"commit:{path.name}")
        old = path.parent / f".{path.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        diskspace.raise_if_full(exc, path)
        raise
