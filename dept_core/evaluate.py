"""Evaluation of a pre-trained variant, as in the paper and beyond.

1. **As trained** — each exported model (body + the source's own embeddings and tokenizer) on
   its source's test split; held-out sources with the global model (GLOB, TRIM, STD: SPEC and
   SPEC-OPT have no global embedding). Perplexity, bits/byte, and the source's unigram
   cross-entropy as the difficulty yardstick (UNIGRAM-CE, from the tokenizers stage).
2. **Continued pre-training** with a fresh global embedding (every variant) and from the
   pre-trained global embedding (GLOB, TRIM, STD), then the test splits with the global
   tokenizer, in and out of distribution (`dept_core.continued`).
3. **Plasticity** on the unseen sources (`dept_core.continued.plasticity`).
4. **Downstream** fine-tuning with a classification head (`dept_core.downstream`).

The variant `random` is the reference: the initial body every variant starts from (same seed),
never pre-trained — the floor for plasticity and downstream.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from dept_core import REPO_ROOT, accel, interrupt, layout
from dept_core import continued as cp
from dept_core import tokenizers as tk
from dept_core.config import Config
from dept_core import body_protocols, probe
from dept_core.downstream import prepare_task
from dept_core.errors import DataError
from dept_core.export import check_model_dir
from dept_core.model import build_model, get_bank, get_body
from dept_core.data import read_split
from dept_core.metrics import bits_per_byte
from dept_core.sourcedata import split_eval_set
from dept_core.trainer import evaluate_set
from dept_core.variants import REFERENCE


def load_lm(model_dir: Path):
    from transformers import AutoModelForCausalLM

    check_model_dir(model_dir)  # a tokenizer that does not fit the model: one clear error
    return AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True)


def evaluate_model_dir(model_dir: Path, prepared: Path, source: str, split: str,
                       seq_len: int) -> dict:
    """Loss, perplexity and bits/byte (and per-document losses) of an exported HF model
    directory on a whole split, read with the directory's own tokenizer."""
    model = load_lm(model_dir)  # checks that the tokenizer fits the model first
    ev = split_eval_set(Path(model_dir), prepared, source, split, seq_len)
    return evaluate_set(model, ev, torch.device("cpu"), per_doc=True)


def evaluate_variant(models_dir: Path, prepared: Path, train_sources: list[str],
                     heldout: list[str], seq_len: int) -> dict:
    models_dir = Path(models_dir)
    ind, ood = {}, {}
    for src in train_sources:
        if (models_dir / src).is_dir():  # a SPEC source never sampled has no model
            ind[src] = evaluate_model_dir(models_dir / src, prepared, src, "test", seq_len)
    if (models_dir / "global").is_dir():
        for src in heldout:
            ood[src] = evaluate_model_dir(models_dir / "global", prepared, src, "test",
                                          seq_len)
    return cp.with_means(ind, ood)


def pretrained_parts(models_dir: Path) -> tuple[dict, dict | None]:
    """(body, global bank or None) of a variant's exported models."""
    models_dir = Path(models_dir)
    dirs = sorted(p for p in models_dir.iterdir() if (p / "config.json").is_file()) \
        if models_dir.is_dir() else []
    if not dirs:
        raise DataError(f"{models_dir}: no exported models — run the pretrain stage first")
    glob_dir = models_dir / "global"
    model = load_lm(glob_dir if glob_dir.is_dir() else dirs[0])
    body = get_body(model)
    return body, (get_bank(model) if glob_dir.is_dir() else None)


def unigram_yardstick(tok_root: Path, prepared: Path, sources: list[str]) -> dict[str, dict]:
    """The paper's UNIGRAM-CE yardstick per source, with the global tokenizer: on the
    validation split (from the tokenizers stage) and on the test split, per document (an
    add-one unigram model of the source's train split; see `tokenizers.unigram_doc_losses`),
    so that every model's test bits/byte can be divided by it on exactly the same documents."""
    stats_path = Path(tok_root) / "stats.json"
    stats = json.loads(stats_path.read_text())["global"]["sources"] \
        if stats_path.is_file() else {}
    sp = tk.load(Path(tok_root) / "global" / "spm.model")
    out = {}
    for k in sources:
        test = read_split(prepared, k, "test")
        losses = tk.unigram_doc_losses(sp, read_split(prepared, k, "train"), test)
        n_bytes = [len(t.encode("utf-8")) for t in test]
        out[k] = {"test_bpb": bits_per_byte(sum(losses), sum(n_bytes)),
                  "docs": {"loss": losses, "bytes": n_bytes}}
        if k in stats:
            out[k].update(unigram_ce=stats[k]["unigram_ce"],
                          unigram_bpb=stats[k]["unigram_bits_per_byte"])
    return out


def run_protocol(cfg: Config, variant: str, root: Path, device,
                 log: Callable[[str], None] = print) -> dict:
    """Every evaluation of one variant (or of the random reference) -> a JSON-able dict.

    Reads the project at `root`: prepared data, tokenizers and (unless `random`) the
    variant's exported models of training seed `cfg.train.seed`
    (results/pretrain/<variant>/seed-<seed>/models).
    """
    root = Path(root)
    accel.tune_host_allocator(cfg)
    accel.deterministic(cfg.train.seed)
    prepared, tok_root = layout.prepared(root), layout.tokenizers(root)
    models_dir = layout.models_dir(root, variant, cfg.train.seed)
    ev, train_src, heldout = cfg.evaluate, cfg.data.train_sources, cfg.data.heldout_sources
    global_dir = Path(tok_root) / "global"
    gsp = tk.load(global_dir / "spm.model")
    vocab = gsp.get_piece_size()
    out: dict = {"variant": variant, "seed": cfg.train.seed,
                 "unigram": unigram_yardstick(tok_root, prepared, train_src + heldout),
                 "seconds": {}}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        out["seconds"][name] = round(now - clock, 2)
        log(f"{variant}: {name} done in {now - clock:.1f} s")
        clock = now

    interrupt.where(f"evaluate {variant}")

    if variant == REFERENCE:
        body, pre_bank = get_body(build_model(cfg.model, vocab, cfg.train.seed)), None
    else:
        interrupt.detail("as trained")
        out["as_trained"] = evaluate_variant(models_dir, prepared, train_src, heldout,
                                             cfg.train.seq_len)
        lap("as_trained")
        body, pre_bank = pretrained_parts(models_dir)

    need_tests = cp.cpt_steps(cfg) > 0 or ev.probe.steps > 0
    tests = cp.test_sets(cfg, prepared, global_dir, train_src + heldout) if need_tests else {}
    data = cp.global_data(cfg, prepared, tok_root, train_src) if need_tests else {}
    models = {}  # the global-tokenizer models the body protocols continue from
    if cp.cpt_steps(cfg) > 0:
        starts = {"fresh": cp.fresh_bank(cfg, vocab)}
        if pre_bank is not None and variant in ev.cpt_from_pretrained:
            starts["pretrained"] = pre_bank
        out["continued"] = {}
        for name, bank in starts.items():
            interrupt.detail(f"CPT ({name} embedding)")
            model, info = cp.continued_pretraining(cfg, body, bank, data, device,
                                                   curve=name == "fresh")
            out["continued"][name] = {**info, **_tested(model, tests, train_src, heldout,
                                                        device)}
            if name == "fresh":
                models["after_cpt"] = model
            lap(f"continued_{name}")

    if ev.probe.steps > 0:
        interrupt.detail("frozen-body probe")
        model, info = probe.lm_probe(cfg, body, vocab, data, device)
        out["probe"] = {**info, **_tested(model, tests, train_src, heldout, device)}
        models["probe"] = model
        lap("probe")

    unseen = ev.plasticity_sources if ev.plasticity_sources is not None else heldout
    if ev.plasticity_steps > 0 and unseen:
        interrupt.detail("plasticity")
        pdata = cp.global_data(cfg, prepared, tok_root, unseen)
        out["plasticity"] = {"steps": ev.plasticity_steps,
                             "curves": {k: cp.plasticity(cfg, body, vocab, pdata[k], device)
                                        for k in unseen}}
        lap("plasticity")

    untrained = cp.model_from(cfg, body, cp.fresh_bank(cfg, vocab), device) \
        if variant == REFERENCE else None
    if ev.downstream.enabled:
        interrupt.detail("downstream")
        task = prepare_task(cfg, task_path(root, ev.downstream.path))
        out["downstream"] = body_protocols.downstream(
            cfg, task, untrained, models_dir, models, gsp, device,
            with_ceilings=variant == REFERENCE or not ev.reference)
        lap("downstream")

    if ev.minimal_pairs.items_per_source > 0:
        interrupt.detail("zero-shot minimal pairs")
        out["zero_shot"] = body_protocols.zero_shot(
            cfg, prepared, tok_root, untrained, models_dir, models, gsp, device)
        lap("zero_shot")
    return out


def _tested(model, tests: dict, train_src: list[str], heldout: list[str], device) -> dict:
    res = cp.evaluate_sets(model, tests, device)
    return cp.with_means({k: res[k] for k in train_src}, {k: res[k] for k in heldout})


def task_path(root: Path, path: str) -> Path:
    """`evaluate.downstream.path`: absolute, else relative to the project root, else (for the
    embedded `corpus/...` task) relative to this repository."""
    p = Path(path)
    if p.is_absolute() or (Path(root) / p).exists():
        return p if p.is_absolute() else Path(root) / p
    return REPO_ROOT / p if (REPO_ROOT / p).exists() else Path(root) / p
