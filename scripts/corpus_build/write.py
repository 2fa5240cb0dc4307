"""Deterministic selection and writing: byte-budget sampling, chunking, gzip files
with mtime 0 (identical bytes for identical inputs), manifest entries and manifest."""
import datetime
import gzip
import hashlib
import io
import json
import re
import sys
from pathlib import Path


def sha1(s):
    return hashlib.sha1(s.encode("utf-8")).hexdigest()


def nbytes(text):
    return len(text.encode("utf-8"))


def take(docs, cap, priority=None):
    """Deterministic sample: order by (priority, sha1(id)), fill up to cap bytes,
    return sorted by id."""
    rank = priority or (lambda i: 0)
    out, total = [], 0
    for doc in sorted(docs, key=lambda d: (rank(d["id"]), sha1(d["id"]))):
        if total >= cap:
            break
        out.append(doc)
        total += nbytes(doc["text"])
    return sorted(out, key=lambda d: d["id"])


def chunk(paras, lo=4000, hi=8000, sep="\n\n"):
    """Group paragraphs into chunks of ~lo..hi bytes (hard-cut only giant ones)."""
    pieces = []
    for p in paras:
        while nbytes(p) > hi:
            cut = p.rfind("\n", 0, hi) if "\n" in p[:hi] else hi
            cut = cut if cut > 0 else hi
            pieces.append(p[:cut])
            p = p[cut:].lstrip("\n")
        if p.strip():
            pieces.append(p)
    chunks, cur, size = [], [], 0
    for p in pieces:
        if cur and (size >= lo or size + nbytes(p) > hi):
            chunks.append(sep.join(cur))
            cur, size = [], 0
        cur.append(p)
        size += nbytes(p) + len(sep)
    if cur:
        chunks.append(sep.join(cur))
    return chunks


def tidy(text):
    """Drop invisible/control characters that break line-oriented JSONL readers."""
    text = re.sub(r"[\u2028\u2029\x85]", "\n", text)
    return re.sub(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\xad\u200b\ufeff]", "", text)


def write_jsonl_gz(path, docs):
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = "".join(json.dumps(d, ensure_ascii=False) + "\n"
                  for d in docs).encode("utf-8")
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0,
                       compresslevel=9) as gz:
        gz.write(raw)
    path.write_bytes(buf.getvalue())
    return hashlib.sha256(buf.getvalue()).hexdigest()


def emit(out, preset, name, docs, pkg, version, licence, heldout):
    path = Path(out) / preset / f"{name}.jsonl.gz"
    docs = [{**d, "text": tidy(d["text"])} for d in docs]
    digest = write_jsonl_gz(path, docs)
    print(f"{path}: {len(docs)} docs, {sum(nbytes(d['text']) for d in docs)} bytes",
          file=sys.stderr)
    return {"path": f"{preset}/{name}.jsonl.gz", "preset": preset, "name": name,
            "origin_package": pkg, "origin_version": version, "licence": licence,
            "sha256": digest, "bytes": sum(nbytes(d["text"]) for d in docs),
            "documents": len(docs), "heldout": heldout}


def built_on(workdir):
    """Date of the newest input artefact (keeps the manifest reproducible)."""
    files = [p for d in ("debs", "pypi", "apt") for p in Path(workdir, d).iterdir()]
    newest = max(p.stat().st_mtime for p in files)
    return datetime.datetime.fromtimestamp(newest, datetime.timezone.utc).date().isoformat()


def write_manifest(out, built_with, workdir, files):
    """corpus/manifest.json: how and from what date of inputs it was built, and the files."""
    manifest = {"built_with": built_with, "built_on": built_on(workdir), "files": files}
    Path(out, "manifest.json").write_text(
        json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
