"""dept_core.hf_tokenizer: exported HF tokenizers must match sentencepiece exactly.

Tiny unigram and BPE models are trained (as the pipeline trains them) on real multilingual text
found on this machine: English licence texts and the de/fr/ru/ja/zh translations of GNU tools'
messages (gettext catalogues under /usr/share/locale).
"""

from __future__ import annotations

import gettext
import io
import os
import random
from pathlib import Path

import pytest
import sentencepiece as spm

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dept_core.hf_tokenizer import export_hf_tokenizer, trim_spm_model  # noqa: E402

EN_FILES = ["GPL-3", "Apache-2.0", "LGPL-2.1", "MPL-2.0"]
DOMAINS = ["grep", "sed", "libc", "make", "findutils", "tar", "coreutils", "diffutils", "wget"]
HELDOUT_DOMAINS = ["glib20", "libapt-pkg6.0", "xz", "psmisc", "procps-ng", "bash", "gettext-runtime"]
LANG_CHARS = {"de": 20000, "fr": 20000, "ru": 20000, "ja": 2500, "zh_CN": 2500}
VOCAB = 800

TRICKY = [
    "", " ", "  ", "   leading spaces", "trailing spaces   ", "double  spaces  inside", "\n", "\n\n",
    "para one\n\npara two\n", "\ttab\tseparated\t", " \t \n mixed \n\t ", "\r\nwindows line\r\n",
    "emoji 😀👍🏽 family 👨\u200d👩\u200d👧 flag 🇩🇪", "rare CJK 𠮷野家 龘 鬱 䨻 𪚥", "ハンカク ｶﾀｶﾅ and ＦＵＬＬ",
    "combining e\u0301 a\u0308 n\u0303 vs é ä ñ", "Zürich Straße ÄÖÜ – “quotes” …", "Ça va ? « oui » l’été",
    "Привет, мир! Ёлка, щука, ъ.", "日本語のテキスト、カタカナ。", "中文文本，测试一下。",
    "literal <s> </s> <unk> <pad> <0x41> <0x0A>", "<s>", "numbers 1234567890 3.14159 -42 ½",
    "\u00a0nbsp\u2009thin\u3000ideographic", "zero\u200bwidth joiner", "nul\x00 del\x7f bell\x07",
    "a" * 300, "🙂" * 20, "x\n" * 50, "The GNU General Public License\n\n  is a free, copyleft licence.",
]
# sentencepiece itself maps a literal "▁" to a space: ids/decode parity only, no round trip.
META = ["literal ▁ meta ▁▁symbol", "▁"]


def _mo_texts(lang: str, domains: list[str], cap: int) -> list[str]:
    out, n = [], 0
    for dom in domains:
        path = Path(f"/usr/share/locale/{lang}/LC_MESSAGES/{dom}.mo")
        if not path.is_file():
            continue
        try:
            with path.open("rb") as fh:
                catalog = gettext.GNUTranslations(fh)._catalog
        except (OSError, UnicodeDecodeError):
            continue
        for key, value in catalog.items():
            if key and isinstance(value, str) and value.strip() and value != key:
                out.append(value)
                n += len(value)
                if n >= cap:
                    return out
    return out


@pytest.fixture(scope="module")
def corpus() -> dict[str, list[str]]:
    texts: dict[str, list[str]] = {"en": []}
    for name in EN_FILES:
        path = Path("/usr/share/common-licenses") / name
        if path.is_file():
            texts["en"] += [p for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    for lang, cap in LANG_CHARS.items():
        texts[lang] = _mo_texts(lang, DOMAINS, cap)
    sizes = {k: sum(map(len, v)) for k, v in texts.items()}
    if sizes["en"] < 30000 or sum(sizes.values()) < 50000 or min(sizes.values()) < 1000:
        pytest.skip(f"not enough real text on this machine: {sizes}")
    texts["heldout"] = [t for lang in LANG_CHARS for t in _mo_texts(lang, HELDOUT_DOMAINS, 3000)]
    return texts


def _train(lines: list[str], model_type: str, path: Path) -> Path:
    spm.set_random_generator_seed(1)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, vocab_size=VOCAB, model_type=model_type,
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        character_coverage=0.9995, unk_id=0, bos_id=1, eos_id=2, pad_id=3, split_digits=True,
        input_sentence_size=200000, shuffle_input_sentence=True, num_threads=2, minloglevel=2,
    )
    path.write_bytes(buf.getvalue())
    return path


@pytest.fixture(scope="module")
def models(corpus, tmp_path_factory) -> dict:
    """model_type -> (sentencepiece processor, HF tokenizer, spm path, export dir)."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("hf_tok")
    train = [t for lang in ["en", *LANG_CHARS] for t in corpus[lang]]
    lines = [line for t in train for line in t.split("\n") if line.strip()]
    out = {}
    for mt in ["unigram", "bpe"]:
        model = _train(lines, mt, root / f"{mt}.model")
        export_hf_tokenizer(model, root / f"hf_{mt}")
        tok = AutoTokenizer.from_pretrained(root / f"hf_{mt}", local_files_only=True)
        out[mt] = (spm.SentencePieceProcessor(model_file=str(model)), tok, model, root / f"hf_{mt}")
    return out


def _all_texts(corpus) -> list[str]:
    return [t for texts in corpus.values() for t in texts]


def _assert_parity(sp, tok, texts: list[str], roundtrip: bool = True) -> None:
    hf_ids = tok(texts, add_special_tokens=False)["input_ids"]
    sp_ids = sp.encode(texts)
    for text, a, b in zip(texts, hf_ids, sp_ids):
        assert a == b, f"ids differ for {text[:60]!r}: {sp.id_to_piece(a)[:30]} vs {sp.id_to_piece(b)[:30]}"
        assert tok.decode(b) == sp.decode(b), f"decode differs for {text[:60]!r}"
        if roundtrip:
            assert sp.decode(b) == text


@pytest.mark.parametrize("mt", ["unigram", "bpe"])
def test_special_tokens_and_files(models, mt):
    sp, tok, model, out_dir = models[mt]
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 3)
    assert (tok.unk_token, tok.bos_token, tok.eos_token, tok.pad_token) == ("<unk>", "<s>", "</s>", "<pad>")
    assert len(tok) == sp.get_piece_size() == VOCAB
    assert tok.convert_ids_to_tokens(list(range(VOCAB))) == [sp.id_to_piece(i) for i in range(VOCAB)]
    # add_special_tokens=True prepends <s> only (Llama convention); decode can skip it
    ids = sp.encode("Hello world")
    assert tok("Hello world")["input_ids"] == [1, *ids]
    assert tok.decode([1, *ids, 2], skip_special_tokens=True) == sp.decode([1, *ids, 2]) == "Hello world"
    assert (out_dir / "spm.model").read_bytes() == model.read_bytes()
    assert spm.SentencePieceProcessor(model_file=str(out_dir / "spm.model")).encode("Hallo") == sp.encode("Hallo")


@pytest.mark.parametrize("mt", ["unigram", "bpe"])
def test_corpus_parity(models, corpus, mt):
    sp, tok, _, _ = models[mt]
    texts = _all_texts(corpus)
    lines = [line for t in texts for line in t.split("\n")]
    _assert_parity(sp, tok, texts + lines)


@pytest.mark.parametrize("mt", ["unigram", "bpe"])
def test_tricky_strings(models, mt):
    sp, tok, _, _ = models[mt]
    _assert_parity(sp, tok, TRICKY)
    _assert_parity(sp, tok, META, roundtrip=False)
    pieces = {p for t in TRICKY for p in sp.encode(t, out_type=str)}
    assert {"<0x0A>", "<0xF0>"} <= pieces  # newlines and emoji went through byte fallback
    for text in ["<s>", "literal <s> </s> <unk> <pad> <0x41>"]:  # plain text, never control ids
        assert not set(tok(text, add_special_tokens=False)["input_ids"]) & {0, 1, 2, 3}


@pytest.mark.parametrize("mt", ["unigram", "bpe"])
def test_decode_parity_arbitrary_ids(models, mt):
    """Decoding sequences that encoding never produces (pieces in any order, specials inside)."""
    sp, tok, _, _ = models[mt]
    normal = [i for i in range(VOCAB) if not (sp.is_byte(i) or sp.is_control(i) or sp.is_unknown(i))]
    byte_runs = [sp.encode(ch) for ch in "é€😀𠮷\n\t"]  # whole characters: valid UTF-8 runs
    rng = random.Random(0)
    for _ in range(500):
        ids: list[int] = []
        for _ in range(rng.randrange(1, 10)):
            ids += rng.choice(byte_runs)[1:] if rng.random() < 0.2 else [rng.choice(normal)]
        assert tok.decode(ids) == sp.decode(ids), sp.id_to_piece(ids)
        with_specials = [1, *ids, 2, 3]
        assert tok.decode(with_specials, skip_special_tokens=True) == sp.decode(with_specials)


@pytest.mark.parametrize("mt", ["unigram", "bpe"])
def test_long_document(models, corpus, mt):
    """One ~150 KB string. BPE is exact; sentencepiece's unigram sums scores in float32 (tokenizers
    in float64), so a near-tie deep into a long string may resolve differently: allow a handful."""
    sp, tok, _, _ = models[mt]
    doc = "\n\n".join(_all_texts(corpus))
    a, b = tok(doc, add_special_tokens=False)["input_ids"], sp.encode(doc)
    assert sp.decode(b) == doc and tok.decode(a) == doc
    if mt == "bpe":
        assert a == b
    else:
        differing = sum(x != y for x, y in zip(a, b))
        assert abs(len(a) - len(b)) <= 5 and differing <= max(10, len(b) // 5000), differing


def test_export_rejects_unsupported_model(models, tmp_path):
    from sentencepiece import sentencepiece_model_pb2 as pb2

    proto = pb2.ModelProto()
    proto.ParseFromString(models["unigram"][2].read_bytes())
    proto.normalizer_spec.remove_extra_whitespaces = True
    bad = tmp_path / "bad.model"
    bad.write_bytes(proto.SerializeToString())
    with pytest.raises(ValueError, match="remove_extra_whitespaces"):
        export_hf_tokenizer(bad, tmp_path / "out")
    proto.ParseFromString(models["bpe"][2].read_bytes())  # drop the "▁" piece, keep "▁the" & co
    del proto.pieces[models["bpe"][0].piece_to_id("▁")]
    bad.write_bytes(proto.SerializeToString())
    with pytest.raises(ValueError, match="no single-character piece"):
        export_hf_tokenizer(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _always(sp) -> set[int]:
    return {i for i in range(sp.get_piece_size()) if i < 4 or sp.is_byte(i)}


@pytest.mark.parametrize("mt", ["unigram", "bpe"])
def test_trim(models, corpus, tmp_path, mt):
    sp, _, model, _ = models[mt]
    from transformers import AutoTokenizer

    seen = corpus["en"] + corpus["de"]  # the sub-vocabulary's own texts
    other = corpus["ru"] + corpus["ja"] + corpus["heldout"]  # texts needing removed pieces
    keep = _always(sp) | {i for ids in sp.encode(seen) for i in ids}
    out = tmp_path / "trim.model"
    kept = trim_spm_model(model, sorted(keep), out, add_char_pieces=True)
    assert kept == sorted(kept) and set(kept) >= keep and len(kept) < VOCAB
    tsp = spm.SentencePieceProcessor(model_file=str(out))
    assert tsp.get_piece_size() == len(kept)
    assert [tsp.id_to_piece(i) for i in range(len(kept))] == [sp.id_to_piece(g) for g in kept]
    if mt == "unigram":  # same segmentation for text covered by the kept pieces
        for text in seen:
            assert [kept[i] for i in tsp.encode(text)] == sp.encode(text)
    removed = {i for ids in sp.encode(other) for i in ids} - set(kept)
    assert removed  # `other` really uses removed pieces ...
    for text in other + TRICKY:  # ... and still encodes and decodes back to itself
        assert tsp.decode(tsp.encode(text)) == text
    assert any(tsp.is_byte(i) for ids in tsp.encode(corpus["ru"]) for i in ids)  # Cyrillic -> bytes
    export_hf_tokenizer(out, tmp_path / "hf")
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    _assert_parity(tsp, tok, seen + other + TRICKY)
    assert (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id, tok.pad_token_id) == (1, 2, 0, 3)


def test_trim_validation(models, tmp_path):
    sp, _, model, _ = models["bpe"]
    base = _always(sp)
    out = tmp_path / "t.model"
    with pytest.raises(ValueError, match=r"special ids \[2\].*</s>"):
        trim_spm_model(model, sorted(base - {2}), out)
    byte_a = sp.piece_to_id("<0x41>")
    with pytest.raises(ValueError, match="1 byte-piece ids"):
        trim_spm_model(model, sorted(base - {byte_a}), out)
    with pytest.raises(ValueError, match="out of range"):
        trim_spm_model(model, sorted(base | {VOCAB}), out)
    # a multi-character piece without its characters' single pieces: named, or added on request
    piece = next(i for i in range(VOCAB) if len(sp.id_to_piece(i)) > 2 and not sp.is_byte(i) and i > 3)
    chars = {sp.piece_to_id(c) for c in sp.id_to_piece(piece)}
    with pytest.raises(ValueError, match="single-character piece"):
        trim_spm_model(model, sorted(base | {piece}), out)
    assert not out.exists()
    kept = trim_spm_model(model, sorted(base | {piece}), out, add_char_pieces=True)
    assert kept == sorted(base | {piece} | chars)
