"""Building blocks of scripts/build_corpus.py (stdlib only).

config                what the corpus is built from, and the size budgets
fetch                 finding and downloading the artefacts; their versions
debs                  reading the members of .deb files
extract_multilingual  LibreOffice help pages -> multilingual/<lang>.jsonl.gz
extract_multidomain   code/docs/legal/literature/maths/dialogue -> multidomain/
extract_downstream    Debian package descriptions -> downstream/topic.jsonl.gz
write                 deterministic selection, chunking, gzip output, manifest
"""
