"""Prepared data: cleaning, de-duplication, deterministic splits, and their on-disk form.

On disk (`data/prepared/`): `<source>/{train,val,test}.jsonl` (one `{"id", "text"}` per line)
and `manifest.json` (per source and split: bytes, documents, sha256).
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from dept_core.atomic import atomic_dir, write_json
from dept_core.config import Config
from dept_core.errors import DataError
from dept_core.sources import read_source

SPLITS = ("train", "val", "test")
# C0/C1 control characters except tab and newline; also lone surrogates and non-characters.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
_BLANK_RUNS = re.compile(r"\n{3,}")
_TRAILING_WS = re.compile(r"[ \t]+\n")


def normalise(text: str) -> str:
    """NFC, LF line ends, no control characters, no trailing blanks, at most one empty line."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = unicodedata.normalize("NFC", text)
    text = _CONTROL.sub("", text)
    text = _TRAILING_WS.sub("\n", text)
    return _BLANK_RUNS.sub("\n\n", text).strip()


@dataclass(frozen=True)
class Document:
    id: str
    text: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def clean_documents(docs: Iterable[tuple[str, str]], min_chars: int) -> list[Document]:
    """Normalise, drop short documents and exact duplicates (first occurrence wins)."""
    out: list[Document] = []
    seen: set[str] = set()
    for doc_id, raw in docs:
        doc = Document(doc_id, normalise(raw))
        if len(doc.text) < min_chars or doc.digest in seen:
            continue
        seen.add(doc.digest)
        out.append(doc)
    return out


def split_documents(docs: list[Document], seed: int, val_bytes: int,
                    test_bytes: int) -> dict[str, list[Document]]:
    """Deterministic split by a seeded hash of each document's content.

    Documents are ordered by sha256(seed, text); test takes whole documents from the front
    until it holds `test_bytes` of text (at least one), val the next `val_bytes`, train the
    rest. The assignment does not depend on the order documents were read in, and the test
    and validation samples have the same size for every source.
    """
    keyed = sorted(docs, key=lambda d: hashlib.sha256(f"{seed}\0{d.digest}".encode()).digest())
    n_test = _take_bytes(keyed, 0, test_bytes)
    n_val = _take_bytes(keyed, n_test, val_bytes)
    return {"test": keyed[:n_test], "val": keyed[n_test:n_val], "train": keyed[n_val:]}


def _take_bytes(docs: list[Document], start: int, n_bytes: int) -> int:
    """The end index of whole documents from `start` holding >= n_bytes (at least one)."""
    total, i = 0, start
    while i < len(docs) and (i == start or total < n_bytes):
        total += len(docs[i].text.encode("utf-8"))
        i += 1
    return i


def prepare_source(src, cfg: Config, root: Path) -> dict[str, list[Document]]:
    """Read, clean and split one source. Raises DataError naming the source on bad input."""
    p = cfg.prepare
    raw = read_source(src, root, max_bytes=p.max_bytes_per_source)
    docs = clean_documents(raw, p.min_doc_chars)
    if len(docs) < 3:
        raise DataError(
            f"source '{src.name}': {len(docs)} document(s) of at least "
            f"{p.min_doc_chars} characters after cleaning; need at least 3 "
            f"(one each for train, val and test)"
        )
    splits = split_documents(docs, cfg.seed, p.val_bytes, p.test_bytes)
    train = sum(len(d.text.encode("utf-8")) for d in splits["train"])
    if train < p.min_train_bytes:
        have = sum(len(d.text.encode("utf-8")) for d in docs)
        raise DataError(
            f"source '{src.name}': {train} bytes of training text left after "
            f"prepare.test_bytes ({p.test_bytes}) and prepare.val_bytes ({p.val_bytes}) of its "
            f"{have} bytes (prepare.min_train_bytes: {p.min_train_bytes}); lower those, raise "
            f"prepare.max_bytes_per_source or add text")
    return splits


def prepare(cfg: Config, root: Path) -> dict[str, dict[str, list[Document]]]:
    """Every configured source, read, cleaned and split (nothing is written)."""
    return {src.name: prepare_source(src, cfg, root) for src in cfg.data.sources}


def _jsonl(docs: list[Document]) -> bytes:
    lines = (json.dumps({"id": d.id, "text": d.text}, ensure_ascii=False) for d in docs)
    return "".join(line + "\n" for line in lines).encode("utf-8")


def write_prepared(
    prepared: dict[str, dict[str, list[Document]]], out_dir: Path, heldout: set[str]
) -> dict:
    """Write all sources atomically (the whole directory is swapped in at the end)."""
    manifest: dict = {"sources": {}}
    with atomic_dir(out_dir) as tmp:
        for name, splits in prepared.items():
            entry: dict = {"heldout": name in heldout, "splits": {}}
            for split in SPLITS:
                blob = _jsonl(splits[split])
                (tmp / name).mkdir(exist_ok=True)
                (tmp / name / f"{split}.jsonl").write_bytes(blob)
                entry["splits"][split] = {
                    "documents": len(splits[split]),
                    "bytes": sum(len(d.text.encode("utf-8")) for d in splits[split]),
                    "sha256": hashlib.sha256(blob).hexdigest(),
                }
            manifest["sources"][name] = entry
        write_json(tmp / "manifest.json", manifest)
    return manifest


def read_split(prepared_dir: Path, source: str, split: str) -> list[str]:
    """The texts of one prepared split, in file order."""
    path = Path(prepared_dir) / source / f"{split}.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: missing — run the prepare stage first (dept prepare)")
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line)["text"] for line in fh if line.strip()]
