"""One training run, whatever its kind: build it, loop its rounds (resumably), write outputs.

The run protocol (`Run`) is shared by every run kind — DEPT's rounds (`rounds.DeptRun`), the
centralised STD baseline (`std.StdRun`) — and used identically by the in-process backend
(`train_variant`, what `dept train` and the Prefect pretrain task call) and the torchrun
backend (`dept_core.distributed`):

    run = build_run(cfg, variant, data, global_vocab, device[, exchange, sources])
    run.restore(ckpt_dir)                       # resume, if a checkpoint exists
    train_loop(run, cfg.train.rounds, ...)      # run_round() ... save() after each round
    result = finish(cfg, variant, run.result(), global_vocab, device)
    write_outputs(cfg, result, tok_root, out_dir)   # metrics.json + one HF model per source
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch
from torch import Tensor

from dept_core import diskspace, interrupt
from dept_core import tokenizers as tk
from dept_core import variants
from dept_core.accel import pick_device, tune_host_allocator
from dept_core.atomic import atomic_dir, write_json
from dept_core.comm import CommLedger
from dept_core.config import Config
from dept_core.errors import DeptError
from dept_core.export import export_model
from dept_core.metrics import (complete_mean, round_metrics,  # noqa: F401 (re-exported)
                               split_timings)
from dept_core.model import nbytes, numel
from dept_core.outer import LOCAL, Exchange
from dept_core.policies import table1_bytes_per_round
from dept_core.rounds import DeptRun, RunOutcome
from dept_core.sourcedata import SourceData, SourceInfo, load_sources
from dept_core.std import StdRun
from dept_core.trainer import MemorySink, MetricsSink

OnRound = Callable[[dict], None]


class Run(Protocol):
    """A resumable training run: rounds, checkpoints, and its final parts."""

    history: list[dict]   # one record per finished round
    done: int             # rounds finished
    source_names: list[str]  # every training source (config order)
    ledger: CommLedger    # every byte that crossed the source/server boundary

    def run_round(self) -> dict:
        """Train one round; append its record to `history` and return it."""

    def save(self, ckpt_dir: Path, keep: int) -> None:
        """Checkpoint everything a resumed run needs (after a finished round)."""

    def restore(self, ckpt_dir: Path) -> bool:
        """Continue from the newest checkpoint in `ckpt_dir`, if any (True if restored)."""

    def result(self) -> RunOutcome | None:
        """The final body and banks (None on a torchrun rank other than 0)."""


@dataclass
class RunResult:
    """A finished run: its metrics (metrics.json) and what is exported."""

    metrics: dict
    body: dict[str, Tensor]
    banks: dict[str, dict[str, Tensor]]  # per source, as exported
    global_bank: dict[str, Tensor] | None
    sources: dict[str, SourceInfo]       # each source's tokenizer and vocabulary


def build_run(cfg: Config, variant: str, data: dict[str, SourceData], global_vocab: int,
              device: torch.device, exchange: Exchange = LOCAL,
              sources: dict[str, SourceInfo] | None = None, replicas=None) -> Run:
    """The run kind the registry names for `variant` (`dept_core.variants`)."""
    spec = variants.get(variant)
    if spec.centralised:
        if exchange is not LOCAL:
            raise DeptError(f"variant {variant} (centralised training) runs in-process only; "
                            f"use train.backend=inprocess for it")
        return StdRun(cfg, data, global_vocab, device,
                      forget_every=cfg.train.act_every if spec.forgets_embeddings else None)
    return DeptRun(cfg, spec, data, global_vocab, device, exchange, sources, replicas)


def round_line(record: dict, rounds: int, sources: list[str]) -> str:
    """One finished round, as a log line."""
    losses = " ".join(f"{k}={v:.3f}" for k, v in record["train_loss"].items())
    line = (f"round {record['round']}/{rounds} | sources {','.join(record['sources'])} | "
            f"train loss {losses} | {record['tokens_per_s']:.0f} tok/s | "
            f"comm {(record['comm']['down'] + record['comm']['up']) / 1e6:.2f} MB")
    mean = complete_mean(record.get("val", {}), sources)
    if mean is not None:
        line += f" | val bits/byte {mean:.3f}"
    return line


def train_loop(run: Run, rounds: int, ckpt_dir: Path | None, keep: int,
               sink: MetricsSink, on_round: OnRound | None = None) -> None:
    """Run the rounds left, checkpointing after each. A resumed run first re-logs its
    finished rounds, so a new tracking run after a crash misses nothing."""
    names = run.source_names
    for record in run.history:
        sink.log(round_metrics(record, run.ledger.totals(upto=record["round"]), names),
                 step=record["round"])
    while run.done < rounds:
        interrupt.detail(f"round {run.done + 1}/{rounds}")
        record = run.run_round()
        sink.log(round_metrics(record, run.ledger.totals(), names), step=record["round"])
        if on_round:
            on_round(record)
        if ckpt_dir is not None:
            run.save(ckpt_dir, keep)


def run_key(cfg: Config, variant: str, prepared: Path, tok_root: Path) -> str:
    """Identifies a run: config + variant + the exact data and tokenizers it trains on
    (the evaluate section does not change pre-training, so it is left out)."""
    skip = {"variants", "seeds"}
    if cfg.train.micro_batch_size is None:  # (keys of runs from before the setting existed)
        skip.add("micro_batch_size")
    if cfg.train.replicas_per_source == 1:  # (likewise; the layout is in the rank dirs' names)
        skip |= {"replicas_per_source", "replica_strategy"}
    dump = cfg.model_dump_json(exclude={"train": skip, "evaluate": True})
    h = hashlib.sha256(dump.encode())
    h.update(variant.encode())
    for f in (Path(prepared) / "manifest.json", Path(tok_root) / "global" / "spm.model"):
        h.update(f.read_bytes() if f.is_file() else b"")
    return h.hexdigest()[:12]


def global_vocab_size(tok_root: Path) -> int:
    return tk.load(Path(tok_root) / "global" / "spm.model").get_piece_size()


def train_variant(cfg: Config, variant: str, prepared: Path, tok_root: Path,
                  ckpt_dir: Path | None, sink: MetricsSink | None = None,
                  on_round: OnRound | None = None) -> tuple[RunResult, dict[str, SourceData]]:
    """Train (or resume, from `ckpt_dir`) one variant in this process."""
    interrupt.where(f"pretrain {variant}")
    device = pick_device(cfg.train.device)
    tune_host_allocator(cfg)
    data = load_sources(variants.get(variant).tokenizer, cfg.data.train_sources, prepared,
                        tok_root, cfg.train.seq_len)
    vocab = global_vocab_size(tok_root)
    run = build_run(cfg, variant, data, vocab, device)
    if ckpt_dir is not None:
        run.restore(ckpt_dir)
    train_loop(run, cfg.train.rounds, ckpt_dir, cfg.train.checkpoint_keep,
               sink or MemorySink(), on_round)
    return finish(cfg, variant, run.result(), vocab, device), data


def finish(cfg: Config, variant: str, outcome: RunOutcome, global_vocab: int,
           device: torch.device) -> RunResult:
    metrics = run_metrics(cfg, variant, outcome, global_vocab)
    metrics.update(variant=variant, global_vocab_size=global_vocab, device=str(device))
    return RunResult(metrics, outcome.body, outcome.banks, outcome.global_bank,
                     outcome.sources)


def run_metrics(cfg: Config, variant: str, outcome: RunOutcome, global_vocab: int) -> dict:
    """metrics.json of a run: sizes, memory, communication (with Table 1), final validation."""
    t, d = cfg.train, cfg.model.dims()["d_model"]
    body, banks, global_bank, ledger = (outcome.body, outcome.banks, outcome.global_bank,
                                        outcome.ledger)
    history, sources = outcome.history, outcome.sources
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
        "sources_per_round": t.sources_per_round, "sources": list(sources),
        "body_params": numel(body),
        "embedding_params": {k: numel(b) for k, b in banks.items()},
        "global_embedding_params": numel(global_bank) if global_bank is not None else None,
        "sub_vocab_size": {k: s.vocab_size for k, s in sources.items()},
        "memory": {"embedding_bytes": {k: nbytes(b) for k, b in banks.items()},
                   "global_embedding_bytes": nbytes(global_bank) if global_bank else 0,
                   "body_bytes": nbytes(body)},
        "comm": {**totals, "per_round": per_round,
                 "per_step": {"down": totals["bytes_down_total"] / steps,
                              "up": totals["bytes_up_total"] / steps},
                 "std_equivalent_total": std_equiv},
        "final": {"val": final, "val_bpb_mean": complete_mean(final, sources)},
        "seed": t.seed, "schedule": t.schedule,
        "participation": {k: sum(k in h["sources"] for h in history) for k in sources},
        "history": history,
    }
    policy = variants.get(variant).policy
    if policy is not None:
        out["comm"]["table1_per_round"] = [
            table1_bytes_per_round(policy, numel(body), global_vocab,
                                   [sources[k].vocab_size for k in h["sources"]], d, pos_rows)
            for h in history]
    return out


def export_all(cfg: Config, result: RunResult, tok_root: Path, out_dir: Path) -> list[Path]:
    """One HF model per source (body + its bank + its tokenizer); a global one too where a
    global embedding exists (GLOB, TRIM, STD)."""
    out = []
    for name, bank in result.banks.items():
        out.append(export_model(cfg.model, result.body, bank, result.sources[name].tokenizer_dir,
                                Path(out_dir) / name))
    if result.global_bank is not None:
        out.append(export_model(cfg.model, result.body, result.global_bank,
                                Path(tok_root) / "global", Path(out_dir) / "global"))
    return out


def write_outputs(cfg: Config, result: RunResult, tok_root: Path, out_dir: Path,
                  export: bool = True) -> None:
    """A run's outputs: `<out_dir>/models/` (swapped in atomically) and `metrics.json`."""
    if export:  # one model per source (+ the global one), and MLflow's copy of them
        banks = [*result.banks.values(), *([result.global_bank] if result.global_bank else [])]
        diskspace.expect_at_least(2 * sum(nbytes(result.body) + nbytes(b) for b in banks))
        with atomic_dir(Path(out_dir) / "models") as tmp:
            export_all(cfg, result, tok_root, tmp)
    metrics, timings = split_timings(result.metrics)
    write_json(Path(out_dir) / "metrics.json", metrics)
    write_json(Path(out_dir) / "timings.json", timings)

