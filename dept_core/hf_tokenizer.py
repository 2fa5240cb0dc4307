"""Export SentencePiece models as transformers tokenizers, and trim SentencePiece vocabularies.

The exported tokenizer reproduces ``sentencepiece`` exactly for the models this project trains
(unigram or BPE, ``byte_fallback=True``, ``normalization_rule_name="identity"``,
``remove_extra_whitespaces=False``, ``add_dummy_prefix`` on, specials ``<unk>=0 <s>=1 </s>=2 <pad>=3``):

* ``tok(text, add_special_tokens=False)["input_ids"] == sp.encode(text)``
* ``tok.decode(ids) == sp.decode(ids)`` for ids without specials (``skip_special_tokens=True`` otherwise).
* ``add_special_tokens=True`` prepends ``<s>`` (Llama convention); ``</s>`` is never appended.
* Literal ``"<s>"``, ``"<unk>"``, ``"<0x41>"`` in text are plain text, as in sentencepiece
  (``split_special_tokens=True``; control/byte pieces get a prohibitive score) — *provided* the
  vocabulary has single-character pieces for ``<`` and ``>``. Where it has not (a small
  per-source vocabulary, measured here), ``tokenizers``' Unigram charges an unknown character
  ``min_score − 10``, which is below any score a control piece can be given, so the literal
  ``<s>`` becomes id 1 while sentencepiece spells it with byte pieces. ``tokenizers`` offers no
  way to exclude a vocabulary entry from matching; such literals do not occur in the corpus.

Known limits (both measured): sentencepiece's unigram Viterbi sums scores in float32, ``tokenizers``
in float64, so on long unigram inputs (tens of KB in one string) a near-tie can resolve differently
(about one piece in 10^5); lines and paragraphs match exactly. Decoding an id sequence whose byte
pieces form invalid UTF-8 (never produced by encoding) gives U+FFFD for every byte of that run,
where sentencepiece keeps the valid characters.

The ``tokenizers`` pipeline is built by hand from the model proto; transformers' own SentencePiece
conversion paths do not match sentencepiece (dropped dummy prefix, undecoded byte pieces).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from sentencepiece import sentencepiece_model_pb2 as sp_pb2
from tokenizers import Tokenizer, decoders, normalizers
from tokenizers.models import BPE, Unigram

__all__ = ["export_hf_tokenizer", "trim_spm_model", "SPECIAL_PIECES"]

SPECIAL_PIECES: tuple[str, ...] = ("<unk>", "<s>", "</s>", "<pad>")  # ids 0..3
_SPACE = "\u2581"  # "▁"
# Score given to <unk>/<s>/</s>/<pad>/<0xNN> in the tokenizers Unigram vocabulary: sentencepiece never
# matches these pieces against text, so they must never win the Viterbi search here either.
_UNMATCHABLE_SCORE = -1e6
_Piece = sp_pb2.ModelProto.SentencePiece


def _load_proto(path: Path) -> sp_pb2.ModelProto:
    proto = sp_pb2.ModelProto()
    proto.ParseFromString(Path(path).read_bytes())
    return proto


def _check_supported(proto: sp_pb2.ModelProto) -> None:
    """Raise ValueError for model settings whose exact reproduction is not implemented."""
    ts, ns = proto.trainer_spec, proto.normalizer_spec
    problems = []
    if ts.model_type not in (sp_pb2.TrainerSpec.UNIGRAM, sp_pb2.TrainerSpec.BPE):
        problems.append(f"model_type={ts.model_type} (only UNIGRAM and BPE)")
    if not ts.byte_fallback:
        problems.append("byte_fallback=False")
    if ns.precompiled_charsmap:
        problems.append(f"normalization rule {ns.name!r} (only 'identity')")
    if ns.remove_extra_whitespaces:
        problems.append("remove_extra_whitespaces=True")
    if ts.treat_whitespace_as_suffix:
        problems.append("treat_whitespace_as_suffix=True")
    odd = {p.type for p in proto.pieces} - {_Piece.NORMAL, _Piece.CONTROL, _Piece.UNKNOWN, _Piece.BYTE}
    if odd:
        problems.append(f"piece types {sorted(odd)} (user-defined/unused pieces)")
    specials = tuple(p.piece for p in proto.pieces[: len(SPECIAL_PIECES)])
    if specials != SPECIAL_PIECES or (ts.unk_id, ts.bos_id, ts.eos_id, ts.pad_id) != (0, 1, 2, 3):
        problems.append(f"first pieces {specials} (expected {SPECIAL_PIECES} with unk/bos/eos/pad ids 0..3)")
    orphans = _orphan_chars(proto)
    if orphans:
        problems.append(
            f"pieces contain characters with no single-character piece: {sorted(orphans)[:20]} "
            "(sentencepiece would still merge them; trim with add_char_pieces=True)"
        )
    if problems:
        raise ValueError("unsupported SentencePiece model: " + "; ".join(problems))


def _orphan_chars(proto: sp_pb2.ModelProto) -> set[str]:
    """Characters used inside normal pieces that have no single-character normal piece.

    sentencepiece's BPE still merges such a character into longer pieces, while ``tokenizers``
    turns it into bytes first; unigram scores its <unk> differently. sentencepiece never trains
    such models; careless trimming creates them.
    """
    normal = [p.piece for p in proto.pieces if p.type == _Piece.NORMAL]
    singles = {p for p in normal if len(p) == 1}
    return {c for p in normal for c in p if c not in singles}


def _bpe_merges(proto: sp_pb2.ModelProto) -> list[tuple[str, str]]:
    """All merges sentencepiece's BPE encoder can apply, best first.

    sentencepiece merges any adjacent pair whose concatenation is a normal piece, highest piece score
    first; so every split of every normal piece into two normal pieces is a merge, ranked by the
    score of the merged piece.
    """
    normal = {p.piece: (-p.score, i) for i, p in enumerate(proto.pieces) if p.type == _Piece.NORMAL}
    merges: list[tuple[tuple[float, int], str, str]] = []
    for piece, rank in normal.items():
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in normal and right in normal:
                merges.append((rank, left, right))
    merges.sort(key=lambda m: m[0])
    return [(left, right) for _, left, right in merges]


def _build_backend(proto: sp_pb2.ModelProto) -> Tokenizer:
    """Build a ``tokenizers.Tokenizer`` reproducing sentencepiece encode/decode for ``proto``."""
    _check_supported(proto)
    if proto.trainer_spec.model_type == sp_pb2.TrainerSpec.UNIGRAM:
        vocab = [(p.piece, p.score if p.type == _Piece.NORMAL else _UNMATCHABLE_SCORE) for p in proto.pieces]
        tok = Tokenizer(Unigram(vocab, unk_id=proto.trainer_spec.unk_id, byte_fallback=True))
    else:
        # BPE only builds pieces through merges, and no merge produces a control/byte piece.
        bpe_vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
        tok = Tokenizer(
            BPE(bpe_vocab, _bpe_merges(proto), unk_token=SPECIAL_PIECES[0], fuse_unk=True, byte_fallback=True)
        )
    norm = [normalizers.Replace(" ", _SPACE)]
    if proto.normalizer_spec.add_dummy_prefix:
        norm.insert(0, normalizers.Prepend(_SPACE))  # Prepend leaves "" untouched, like sentencepiece
    tok.normalizer = normalizers.Sequence(norm)
    tok.pre_tokenizer = None  # sentencepiece segments the whole normalized string at once
    dec = [decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if proto.normalizer_spec.add_dummy_prefix:
        dec.append(decoders.Strip(" ", 1, 0))  # drop the dummy prefix's space once
    tok.decoder = decoders.Sequence(dec)
    return tok


def export_hf_tokenizer(spm_model: Path, out_dir: Path) -> None:
    """Write a transformers tokenizer directory equivalent to the SentencePiece model ``spm_model``.

    ``AutoTokenizer.from_pretrained(out_dir, local_files_only=True)`` loads it (class
    ``TokenizersBackend``, i.e. transformers 5's ``PreTrainedTokenizerFast``); ids and decoding match
    sentencepiece exactly (see the module docstring). ``add_special_tokens=True`` prepends ``<s>``
    (id 1) only. The original model is copied to ``out_dir/spm.model``. Files are written
    straight into ``out_dir``: the tokenizers stage builds its whole output inside
    ``dept_core.atomic.atomic_dir``, so readers never see a partial export.

    Raises:
        ValueError: if the model uses settings whose exact reproduction is not implemented.
    """
    from transformers import PreTrainedTokenizerFast  # heavy import, only needed here

    spm_model, out_dir = Path(spm_model), Path(out_dir)
    proto = _load_proto(spm_model)
    backend = _build_backend(proto)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=SPECIAL_PIECES[0],
        bos_token=SPECIAL_PIECES[1],
        eos_token=SPECIAL_PIECES[2],
        pad_token=SPECIAL_PIECES[3],
        add_bos_token=True,
        add_eos_token=False,
        split_special_tokens=True,
        clean_up_tokenization_spaces=False,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_tok.save_pretrained(str(out_dir))
    shutil.copyfile(spm_model, out_dir / "spm.model")


def trim_spm_model(
    spm_model: Path, keep_ids: Sequence[int], out_path: Path, *, add_char_pieces: bool = False
) -> list[int]:
    """Write a SentencePiece model holding only the pieces whose ids are in ``keep_ids``.

    Pieces keep their original relative order, so the specials stay at ids 0..3. Returns the kept
    global ids in local order: local id ``i`` is global id ``result[i]``. Text needing removed pieces
    still encodes (unigram re-segments with the remaining pieces, BPE stops merging earlier, unknown
    characters fall back to bytes) and decodes back to itself.

    Every character inside a kept piece must keep its single-character piece: otherwise
    sentencepiece and the exported tokenizer segment differently (BPE merges such characters,
    ``tokenizers`` turns them into bytes first). With ``add_char_pieces=True`` those pieces are
    added (they appear in the returned ids); by default their absence is an error.

    Raises:
        ValueError: if an id is out of range, or the specials 0..3, any of the 256 byte pieces or
            (without ``add_char_pieces``) a needed single-character piece is not kept; the message
            names the missing ids.
    """
    spm_model, out_path = Path(spm_model), Path(out_path)
    proto = _load_proto(spm_model)
    _check_supported(proto)
    n = len(proto.pieces)
    kept_set = {int(i) for i in keep_ids}
    bad = sorted(i for i in kept_set if not 0 <= i < n)
    if bad:
        raise ValueError(f"keep_ids out of range [0, {n}): {bad[:20]}")
    missing_special = [i for i in range(len(SPECIAL_PIECES)) if i not in kept_set]
    missing_bytes = [i for i, p in enumerate(proto.pieces) if p.type == _Piece.BYTE and i not in kept_set]
    char_id = {p.piece: i for i, p in enumerate(proto.pieces) if p.type == _Piece.NORMAL and len(p.piece) == 1}
    chars = {c for i in kept_set if proto.pieces[i].type == _Piece.NORMAL for c in proto.pieces[i].piece}
    missing_chars = sorted(char_id[c] for c in chars if char_id[c] not in kept_set)
    if add_char_pieces:
        kept_set.update(missing_chars)
        missing_chars = []
    if missing_special or missing_bytes or missing_chars:
        parts = []
        if missing_special:
            names = [proto.pieces[i].piece for i in missing_special]
            parts.append(f"special ids {missing_special} {names}")
        if missing_bytes:
            parts.append(f"{len(missing_bytes)} byte-piece ids (e.g. {missing_bytes[:8]})")
        if missing_chars:
            names = [proto.pieces[i].piece for i in missing_chars[:20]]
            parts.append(
                f"single-character piece ids {missing_chars[:20]} {names} used inside kept pieces "
                "(or pass add_char_pieces=True)"
            )
        raise ValueError("keep_ids lacks required pieces: " + "; ".join(parts))

    kept = sorted(kept_set)
    new = sp_pb2.ModelProto()
    new.CopyFrom(proto)
    del new.pieces[:]
    new.pieces.extend(proto.pieces[i] for i in kept)
    new.trainer_spec.vocab_size = len(kept)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(new.SerializeToString())  # inside the stage's atomic_dir
    return kept
