"""multilingual/<lang>.jsonl.gz: LibreOffice help pages, one document per page."""
import re
from html.parser import HTMLParser

from .config import HELDOUT, LANG_CAP, LANGS, PAGE_MIN
from .debs import deb_files
from .fetch import deb_version, find_deb
from .write import emit, take


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
