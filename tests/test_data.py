"""Sources, cleaning, splits, the prepared layout, and bad data input."""

import gzip
import json

import pytest

from dept_core.config_io import validate
from dept_core.data import (clean_documents, normalise, prepare, read_split, split_documents,
                            write_prepared)
from dept_core.errors import DataError
from dept_core.sources import CORPUS_DIR, read_source


def real_docs(n=12, item="en"):
    """Real documents from the embedded corpus (for tests that build their own files)."""
    with gzip.open(CORPUS_DIR / "multilingual" / f"{item}.jsonl.gz", "rt") as fh:
        return [json.loads(line)["text"] for _, line in zip(range(n), fh)]


def files_cfg(paths, **extra):
    src = {"name": "mine", "kind": "files", "paths": paths, **extra}
    return validate({"data": {"sources": [src]},
                     "prepare": {"min_doc_chars": 20, "val_bytes": 2000, "test_bytes": 2000,
                                 "min_train_bytes": 100}})


def test_normalise_nfc_controls_newlines():
    assert normalise("e\u0301t\u00e9\r\nx\x07y  \n\n\n\nz") == "\u00e9t\u00e9\nxy\n\nz"


def test_clean_drops_short_and_duplicate_documents():
    docs = [("a", "hello world, long enough"), ("b", "hello world, long enough\r\n"),
            ("c", "short")]
    assert [d.id for d in clean_documents(docs, min_chars=10)] == ["a"]


def test_split_is_deterministic_disjoint_and_seeded():
    # 40 documents of 60 bytes ("document number 7 " × 3 is 54 + ...): sizes in bytes
    docs = clean_documents([(str(i), f"document number {i:02d} " * 3) for i in range(40)], 1)
    size = len(docs[0].text.encode())
    a = split_documents(docs, 0, val_bytes=3 * size, test_bytes=4 * size - 1)
    b = split_documents(list(reversed(docs)), 0, val_bytes=3 * size, test_bytes=4 * size - 1)
    assert a == b  # order of reading does not matter
    # whole documents until the size is reached: 4 for test (4·size − 1 needs a 4th), 3 for val
    assert [len(a[s]) for s in ("train", "val", "test")] == [33, 3, 4]
    ids = [d.id for s in a.values() for d in s]
    assert sorted(ids) == sorted(d.id for d in docs)
    assert split_documents(docs, 1, 3 * size, 4 * size)["test"] != a["test"]
    # at least one document each, however small the size asked for
    tiny = split_documents(docs, 0, val_bytes=1, test_bytes=1)
    assert [len(tiny[s]) for s in ("train", "val", "test")] == [38, 1, 1]


def test_a_source_left_with_too_little_training_text_is_an_error(tmp_path, tiny_raw):
    raw = json.loads(json.dumps(tiny_raw))
    raw["prepare"].update(test_bytes=150000, val_bytes=40000)   # of 200 KB read
    with pytest.raises(DataError, match=r"source 'en': \d+ bytes of training text left after "
                                        r"prepare.test_bytes \(150000\) and prepare.val_bytes "
                                        r"\(40000\)"):
        prepare(validate(raw), tmp_path)


def test_prepared_layout_and_manifest(prepared_root, tiny_cfg):
    manifest = json.loads((prepared_root / "data/prepared/manifest.json").read_text())
    assert set(manifest["sources"]) == {"en", "de", "ja", "es"}
    assert manifest["sources"]["es"]["heldout"] is True
    for name, entry in manifest["sources"].items():
        for split in ("train", "val", "test"):
            texts = read_split(prepared_root / "data/prepared", name, split)
            assert len(texts) == entry["splits"][split]["documents"] > 0
            assert sum(len(t.encode()) for t in texts) == entry["splits"][split]["bytes"]
    assert entry["splits"]["train"]["bytes"] > 30000


def test_files_source_text_and_jsonl(tmp_path):
    docs = real_docs(6)
    for i, d in enumerate(docs[:3]):
        (tmp_path / f"{i}.txt").write_text(d, encoding="utf-8")
    (tmp_path / "more.jsonl").write_text(
        "".join(json.dumps({"body": d}) + "\n" for d in docs[3:]), encoding="utf-8")
    cfg = files_cfg(["*.txt"])
    got = [t for _, t in read_source(cfg.data.sources[0], tmp_path)]
    assert got == docs[:3]
    cfg = files_cfg(["more.jsonl"], format="jsonl", text_field="body")
    assert [t for _, t in read_source(cfg.data.sources[0], tmp_path)] == docs[3:]


def test_hf_datasets_loader_on_local_json_and_parquet(tmp_path):
    """The streaming `datasets` loader, on local files (never a hub download in tests)."""
    import datasets

    docs = real_docs(5, "de")
    (tmp_path / "d.jsonl").write_text(
        "".join(json.dumps({"content": d}) + "\n" for d in docs), encoding="utf-8")
    datasets.Dataset.from_dict({"content": docs}).to_parquet(str(tmp_path / "d.parquet"))
    for builder, f in [("json", "d.jsonl"), ("parquet", "d.parquet")]:
        src = validate({"data": {"sources": [{
            "name": "hf", "kind": "hf", "dataset": builder, "data_files": [f],
            "text_field": "content"}]}}).data.sources[0]
        assert [t for _, t in read_source(src, tmp_path)] == docs
        assert len(list(read_source(src, tmp_path, max_bytes=1))) == 1
    bad = validate({"data": {"sources": [{
        "name": "hf", "kind": "hf", "dataset": "json", "data_files": ["d.jsonl"],
        "text_field": "text"}]}}).data.sources[0]
    with pytest.raises(DataError, match="source 'hf'.*no string field 'text'"):
        list(read_source(bad, tmp_path))


@pytest.mark.parametrize("case", ["missing", "empty", "not_utf8", "binary", "bad_gzip_item"])
def test_bad_sources_name_the_culprit(tmp_path, case):
    if case == "missing":
        cfg, match = files_cfg(["nowhere/*.txt"]), "source 'mine': path 'nowhere/\\*.txt'"
    elif case == "empty":
        (tmp_path / "e.txt").write_text("   \n\n", encoding="utf-8")
        cfg, match = files_cfg(["e.txt"]), "source 'mine': 0 document"
    elif case == "not_utf8":
        (tmp_path / "l1.txt").write_bytes(real_docs(1)[0].encode() + "café".encode("latin-1"))
        cfg, match = files_cfg(["l1.txt"]), r"source 'mine': .*l1\.txt is not UTF-8"
    elif case == "binary":
        (tmp_path / "b.txt").write_bytes(b"\x00\x01\x02ELF" * 50)
        cfg, match = files_cfg(["b.txt"]), r"source 'mine': .*b\.txt is a binary file"
    else:
        cfg = validate({"data": {"sources": [
            {"name": "xx", "kind": "embedded", "preset": "multilingual"}]}})
        match = "source 'xx': embedded preset 'multilingual' has no item 'xx'"
    with pytest.raises(DataError, match=match):
        prepare(cfg, tmp_path)


def test_failed_prepare_leaves_previous_output_untouched(tmp_path):
    docs = real_docs(9)
    for i, d in enumerate(docs):
        (tmp_path / f"{i}.txt").write_text(d, encoding="utf-8")
    out = tmp_path / "data/prepared"
    write_prepared(prepare(files_cfg(["*.txt"]), tmp_path), out, set())
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (tmp_path / "9.txt").write_bytes(b"\xff\xfe broken")
    with pytest.raises(DataError, match="9.txt is not UTF-8"):
        write_prepared(prepare(files_cfg(["*.txt"]), tmp_path), out, set())
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in out.parent.iterdir()] == ["prepared"]  # no temp left behind
