"""Train one variant end to end: load data, run (or resume) the rounds, summarise, export.

This is the function `dept train` and the Prefect pretrain task call.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

from dept_core import accel
from dept_core import tokenizers as tk
from dept_core.comm import table1_bytes_per_round
from dept_core.config import Config
from dept_core.export import export_model
from dept_core.model import ROW_COMPONENTS, build_model, get_bank, get_body, nbytes, numel
from dept_core.rounds import RunResult, _restore, _save, _setup, flat_metrics, run_round
from dept_core.sourcedata import SourceData, load_sources
from dept_core.std import StdRun
from dept_core.trainer import MetricsSink, MemorySink, pick_device

OnRound = Callable[[dict], None]


def run_key(cfg: Config, variant: str, prepared: Path, tok_root: Path) -> str:
    """Identifies a run: config + variant + the exact data and tokenizers it trains on
    (the evaluate section does not change pre-training, so it is left out)."""
    dump = cfg.model_dump_json(exclude={"train": {"variants"}, "evaluate": True})
    h = hashlib.sha256(dump.encode())
    h.update(variant.encode())
    for f in (Path(prepared) / "manifest.json", Path(tok_root) / "global" / "spm.model"):
        h.update(f.read_bytes() if f.is_file() else b"")
    return h.hexdigest()[:12]


def train_variant(cfg: Config, variant: str, prepared: Path, tok_root: Path,
                  ckpt_dir: Path | None, sink: MetricsSink | None = None,
                  on_round: OnRound | None = None) -> tuple[RunResult, dict[str, SourceData]]:
    sink = sink or MemorySink()
    device = pick_device(cfg.train.device)
    data = load_sources(variant, cfg.data.train_sources, prepared, tok_root,
                        cfg.train.seq_len, cfg.train.eval_tokens)
    global_vocab = tk.load(Path(tok_root) / "global" / "spm.model").get_piece_size()
    if variant == "std":
        result = _run_std(cfg, data, global_vocab, device, ckpt_dir, sink, on_round)
    else:
        result = _run_dept(cfg, variant, data, global_vocab, device, ckpt_dir, sink, on_round)
    result.metrics.update(variant=variant, global_vocab_size=global_vocab,
                          device=str(device))
    return result, data


def _loop(run_one, state, cfg, ckpt_dir, save, sink, on_round):
    # A resumed run: the sink (a new MLflow run) gets the finished rounds too, so no finished
    # work is missing from tracking after a crash.
    for record in state.history:
        sink.log(flat_metrics(record, state.ledger.totals(upto=record["round"])),
                 step=record["round"])
    for _ in range(state.done, cfg.train.rounds):
        record = run_one()
        state.history.append(record)
        state.done = record["round"]
        sink.log(flat_metrics(record, state.ledger.totals()), step=record["round"])
        if on_round:
            on_round(record)
        if ckpt_dir is not None:
            save()


def _run_dept(cfg, variant, data, global_vocab, device, ckpt_dir, sink, on_round):
    model, state = _setup(cfg, variant, data, global_vocab)
    accel.prepare(model, state, cfg, device)  # device, optional compile, pinned batches
    if ckpt_dir is not None:
        _restore(ckpt_dir, state)
    _loop(lambda: run_round(model, state, cfg, data, device), state, cfg, ckpt_dir,
          lambda: _save(ckpt_dir, state, cfg.train.checkpoint_keep), sink, on_round)
    policy = state.policy
    banks = {k: b for k in data if (b := policy.eval_bank(k)) is not None}
    result = RunResult({}, state.body, banks, policy.bank)
    result.metrics = summarise(cfg, variant, state.history, state.ledger, state.body, banks,
                               policy.bank, data, global_vocab)
    return result


def _run_std(cfg, data, global_vocab, device, ckpt_dir, sink, on_round):
    run = StdRun(cfg, data, global_vocab, device)
    if ckpt_dir is not None:
        run.restore(ckpt_dir)
    _loop(run.run_round, run, cfg, ckpt_dir,
          lambda: run.save(ckpt_dir, cfg.train.checkpoint_keep), sink, on_round)
    body, bank = get_body(run.model), get_bank(run.model)
    body, bank = {k: v.cpu() for k, v in body.items()}, {k: v.cpu() for k, v in bank.items()}
    banks = {k: bank for k in data}
    result = RunResult({}, body, banks, bank)
    result.metrics = summarise(cfg, "std", run.history, run.ledger, body, banks, bank, data,
                               global_vocab)
    return result


def summarise(cfg, variant, history, ledger, body, banks, global_bank, data,
              global_vocab) -> dict:
    t, d = cfg.train, cfg.model.dims()["d_model"]
    totals = ledger.totals()
    steps = t.rounds * t.local_steps
    pos_rows = cfg.model.max_seq_len if cfg.model.family == "gpt2" else 0
    bank_rows = global_vocab * (1 if cfg.model.tie_embeddings else 2) + pos_rows
    full_params = numel(body) + bank_rows * d  # M: the whole model over the global V
    std_equiv = 2 * full_params * 4 * t.sources_per_round * steps
    per_round = [ledger.round_detail(r) for r in ledger.rounds()]
    final = history[-1].get("val", {}) if history else {}
    out = {
        "variant": variant, "rounds": t.rounds, "local_steps": t.local_steps,
        "sources_per_round": t.sources_per_round, "sources": list(data),
        "body_params": numel(body),
        "embedding_params": {k: numel(b) for k, b in banks.items()},
        "global_embedding_params": numel(global_bank) if global_bank is not None else None,
        "sub_vocab_size": {k: s.vocab_size for k, s in data.items()},
        "memory": {"embedding_bytes": {k: nbytes(b) for k, b in banks.items()},
                   "global_embedding_bytes": nbytes(global_bank) if global_bank else 0,
                   "body_bytes": nbytes(body)},
        "comm": {**totals, "per_round": per_round,
                 "per_step": {"down": totals["bytes_down_total"] / steps,
                              "up": totals["bytes_up_total"] / steps},
                 "std_equivalent_total": std_equiv},
        "final": {"val": final,
                  "val_bpb_mean": (sum(v["bpb"] for v in final.values()) / len(final))
                  if final else None},
        "history": history,
    }
    if variant != "std":
        out["comm"]["table1_per_round"] = [
            table1_bytes_per_round(variant, numel(body), global_vocab,
                                   [data[k].vocab_size for k in h["sources"]], d, pos_rows)
            for h in history]
    return out


def export_all(cfg: Config, result: RunResult, data: dict[str, SourceData], tok_root: Path,
               out_dir: Path) -> list[Path]:
    """One HF model per source (body + its bank + its tokenizer); GLOB/TRIM/STD: global too."""
    out = []
    for name, bank in result.banks.items():
        out.append(export_model(cfg.model, result.body, bank, data[name].tokenizer_dir,
                                Path(out_dir) / name))
    if result.global_bank is not None:
        out.append(export_model(cfg.model, result.body, result.global_bank,
                                Path(tok_root) / "global", Path(out_dir) / "global"))
    return out
