"""downstream/topic.jsonl.gz: Debian package long descriptions labelled with their
archive Section (en from Translation-en, other languages from the DDTP indices)."""
import gzip
import re
from pathlib import Path

from .config import APT_LANGS, LANGS, TOPIC_LABELS, TOPIC_MIN_CHARS, TOPIC_PER_LANG
from .write import emit, sha1


def deb822(raw):
    """Yield dicts of the stanzas of a Packages/Translation index."""
    for stanza in raw.decode("utf-8").split("\n\n"):
        fields, key = {}, None
        for line in stanza.split("\n"):
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line
            elif ":" in line:
                key, val = line.split(":", 1)
                fields[key] = val.strip()
        if fields:
            yield fields


CJK = r"[\u3000-\u30ff\u3400-\u9fff\uf900-\ufaff\uff00-\uffef]"


def unwrap(lines):
    """Join wrapped lines with a space, or with nothing between two CJK characters."""
    out = ""
    for line in (" ".join(l.split()) for l in lines):
        cjk = re.search(CJK + "$", out) and re.match(CJK, line)
        out += line if not out or cjk else " " + line
    return out


def long_description(desc):
    """Debian long description -> one line per paragraph or list item."""
    paras, cur = [], []
    for line in desc.split("\n")[1:] + [" ."]:
        line = line[1:] if line.startswith(" ") else line
        starts_item = re.match(r"\s*[-*+o•]\s", line)
        if (line.strip() == "." or starts_item) and cur:
            paras.append(unwrap(cur))
            cur = []
        if line.strip() != ".":
            cur.append(line)
    return "\n".join(p for p in paras if p)


def topic_examples(apt_dir):
    packages = {}
    for f in deb822(gzip.decompress((apt_dir / "Packages.gz").read_bytes())):
        if "Description-md5" in f and "Section" in f:
            src = f.get("Source", f["Package"]).split(" ")[0]
            label = f["Section"].split("/")[-1]
            packages[(f["Package"], f["Description-md5"])] = (label, src)
    by_lang = {}
    for short, code in APT_LANGS.items():
        seen, rows = set(), []
        raw = gzip.decompress((apt_dir / f"Translation-{code}.gz").read_bytes())
        for f in deb822(raw):
            key = (f.get("Package"), f.get("Description-md5"))
            text = long_description(f.get(f"Description-{code}", ""))
            if key in packages and len(text) >= TOPIC_MIN_CHARS and text not in seen:
                seen.add(text)
                label, src = packages[key]
                rows.append({"id": f"{short}:{key[0]}", "lang": short, "text": text,
                             "label": label, "src": src})
        by_lang[short] = rows
    return by_lang


def stratified(rows, labels, cap, coverage):
    """Round-robin over labels; within a label prefer packages described in more
    languages (more parallel examples), then order by sha1(package)."""
    def key(r):
        pkg = r["id"].split(":", 1)[1]
        return (-coverage[pkg], sha1(pkg))
    pools = {l: sorted((r for r in rows if r["label"] == l), key=key) for l in labels}
    out, depth = [], 0
    while len(out) < cap and any(len(p) > depth for p in pools.values()):
        out += [pools[l][depth] for l in labels if len(pools[l]) > depth][:cap - len(out)]
        depth += 1
    return out


def top_labels(by_lang):
    """The TOPIC_LABELS sections with the largest share summed over languages."""
    share = {}
    for rows in by_lang.values():
        for r in rows:
            share[r["label"]] = share.get(r["label"], 0.0) + 1.0 / len(rows)
    return sorted(sorted(share), key=lambda l: -share[l])[:TOPIC_LABELS]


def build_downstream(workdir, out):
    apt_dir = Path(workdir) / "apt"
    by_lang = topic_examples(apt_dir)
    labels = top_labels(by_lang)
    coverage = {}
    for rows in by_lang.values():
        for r in rows:
            pkg = r["id"].split(":", 1)[1]
            coverage[pkg] = coverage.get(pkg, 0) + 1
    docs = []
    for short in LANGS:
        for r in stratified(by_lang[short], labels, TOPIC_PER_LANG, coverage):
            split = "test" if int(sha1(r.pop("src")), 16) % 5 == 0 else "train"
            docs.append({**r, "split": split})
    docs.sort(key=lambda r: r["id"])
    release = (apt_dir / "RELEASE").read_text().strip()
    return [emit(out, "downstream", "topic", docs, "Debian archive Packages + Translation-* "
                 "indices (DDTP)", release, "Debian package descriptions (DFSG-free packages)",
                 False)]
