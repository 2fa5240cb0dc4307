"""Read the raw documents of a source: the embedded corpus, local files, or HF `datasets`.

Every loader yields `(doc_id, text)` pairs and raises `DataError` naming the culprit for a
missing path, a file that is not UTF-8 text, or a source that yields nothing.
"""

from __future__ import annotations

import glob
import gzip
import json
from pathlib import Path
from typing import Iterator

from dept_core import REPO_ROOT
from dept_core.config import EmbeddedSource, FilesSource, HFSource
from dept_core.errors import DataError

CORPUS_DIR = REPO_ROOT / "corpus"

Doc = tuple[str, str]


def read_source(src, root: Path, max_bytes: int | None = None) -> Iterator[Doc]:
    """Yield raw documents of `src`, stopping once `max_bytes` of text has been yielded."""
    loader = {"embedded": _embedded, "files": _files, "hf": _hf}[src.kind]
    total = 0
    for doc_id, text in loader(src, root):
        yield doc_id, text
        total += len(text.encode("utf-8"))
        if max_bytes is not None and total >= max_bytes:
            return


def _embedded(src: EmbeddedSource, root: Path) -> Iterator[Doc]:
    path = CORPUS_DIR / src.preset / f"{src.item or src.name}.jsonl.gz"
    if not path.is_file():
        have = sorted(p.name.split(".")[0] for p in (CORPUS_DIR / src.preset).glob("*.jsonl.gz"))
        raise DataError(
            f"source '{src.name}': embedded preset '{src.preset}' has no item "
            f"'{src.item or src.name}' ({path}); available: {', '.join(have) or 'none'}"
        )
    yield from _jsonl_lines(path, "text", src.name, opener=gzip.open)


def _files(src: FilesSource, root: Path) -> Iterator[Doc]:
    for pattern in src.paths:
        full = pattern if Path(pattern).is_absolute() else str(root / pattern)
        matches = sorted(glob.glob(full, recursive=True))
        matches = [m for m in matches if Path(m).is_file()]
        if not matches:
            raise DataError(f"source '{src.name}': path '{pattern}' matches no file")
        for m in matches:
            path = Path(m)
            if src.format == "jsonl":
                yield from _jsonl_lines(path, src.text_field, src.name, opener=open)
            else:
                yield str(path.relative_to(root) if path.is_relative_to(root) else path), \
                    _read_text_file(path, src.name)


def _read_text_file(path: Path, source: str) -> str:
    data = path.read_bytes()
    if b"\x00" in data[:65536]:
        raise DataError(f"source '{source}': {path} is a binary file, not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"source '{source}': {path} is not UTF-8 (byte {exc.start}: "
            f"{data[exc.start:exc.start + 1]!r})"
        ) from None


def json_records(path: Path, prefix: str = "", opener=None) -> Iterator[tuple[int, object]]:
    """(line number, parsed JSON) of each non-blank line of a JSON-lines file (`.gz`: gzip).

    Every failure is a DataError naming `prefix`, the file and, for bad JSON, the line.
    """
    opener = opener or (gzip.open if Path(path).suffix == ".gz" else open)
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(
                        f"{prefix}{path}:{lineno}: not valid JSON ({exc.msg})") from None
                yield lineno, obj
    except UnicodeDecodeError as exc:
        raise DataError(f"{prefix}{path} is not UTF-8 ({exc.reason})") from None
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{prefix}cannot read {path} ({exc})") from None


def _jsonl_lines(path: Path, field: str, source: str, opener) -> Iterator[Doc]:
    for lineno, obj in json_records(path, f"source '{source}': ", opener):
        if not isinstance(obj, dict) or not isinstance(obj.get(field), str):
            raise DataError(f"source '{source}': {path}:{lineno}: no string field '{field}'")
        yield str(obj.get("id", f"{path.name}:{lineno}")), obj[field]


def _hf(src: HFSource, root: Path) -> Iterator[Doc]:
    """Stream a `datasets` dataset. Downloads only if the user named a hub dataset."""
    import datasets  # imported lazily: ~1 s, and only this loader needs it

    data_files = None
    if src.data_files:
        data_files = [f if Path(f).is_absolute() else str(root / f) for f in src.data_files]
        for f in data_files:
            if not glob.glob(f):
                raise DataError(f"source '{src.name}': data file '{f}' matches no file")
    try:
        ds = datasets.load_dataset(
            src.dataset, name=src.config, split=src.split, data_files=data_files,
            streaming=src.streaming,
        )
    except Exception as exc:  # datasets raises many types; all mean "cannot open it"
        raise DataError(
            f"source '{src.name}': cannot open dataset '{src.dataset}' "
            f"(config={src.config}, split={src.split}): {str(exc).splitlines()[0]}"
        ) from None
    for i, row in enumerate(ds):
        text = row.get(src.text_field)
        if not isinstance(text, str):
            raise DataError(
                f"source '{src.name}': dataset '{src.dataset}' row {i} has no string field "
                f"'{src.text_field}' (fields: {', '.join(row)})"
            )
        yield f"{src.dataset}:{i}", text
