"""DEPT's rounds on torch.distributed, launched by torchrun (Gloo on CPU, NCCL on GPU).

    torchrun --nproc_per_node 2 -m dept_core.distributed --variant spec \\
             [--params params.yaml] [--set key=value ...] [--root .]

The run is the in-process one (`run.build_run` and `run.train_loop` drive a `rounds.DeptRun`),
unchanged; what differs is which sources a process holds and how the updates meet (paper §3,
Algorithm 1: sources train in parallel from the same θ, the server averages their updates):

* Source i of `data.train_sources` lives on rank i mod W (`train.source_assignment:
  round_robin`) or in contiguous blocks (`block`): only that rank loads its data, holds its
  batch sampler, its inner optimiser state and — SPEC / SPEC-OPT — its embedding bank.
* Every rank keeps a replica of the server state (θ, the GLOB/TRIM global bank, the outer
  optimiser state, the round sampler) and samples the same S_t, so no broadcast is needed.
* At round end `CollectiveExchange` combines the updates of the sampled sources:
    body, GLOB bank, positional table: all_reduce(SUM) of Σ_{k on rank} (w_k/Σw) Δ_k
    TRIM token rows: all_reduce(SUM) of Σ w_k Δ_k per row and of Σ w_k per row, then the
    masked row mean of `outer.masked_row_mean` (rows no sampled source holds: no update)
    SPEC banks: nothing; they never leave their rank during training.
  Then every rank applies the same outer step. Losses, the round's ledger records and the
  validation results are all_gather_object-ed, so every rank's history equals the
  in-process one.
* The communication ledger keeps the in-process accounting (what each source receives and
  contributes: Δθ_k, its |V_k| rows, ...), so `metrics.json` matches the in-process run and
  the paper's Table 1. What the collectives moved is reported beside it
  (`comm.collective`): tensor bytes handed to all_reduce per rank; a ring all_reduce moves
  ~2(W-1)/W of that per rank. TRIM's rows go through a dense |V|×d all_reduce (simple, and
  cheap next to the body); a sparse all_gather of the rows would match the ledger exactly.
* At the end the per-source banks are gathered on rank 0 once, to export the models.

Checkpoints: one directory per rank (`torchrun-rank<r>-of-<W>/`); a relaunch with the same W
resumes from the last round every rank finished.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

from dept_core import accel, layout, variants
from dept_core.atomic import write_json
from dept_core.config import Config
from dept_core.config_io import load_config
from dept_core.errors import ConfigError, DeptError
from dept_core.outer import Exchange, finish_row_mean, masked_row_sums
from dept_core.replicas import check_layout
from dept_core.run import (RunResult, build_run, finish, global_vocab_size, round_line, run_key,
                           train_loop, write_outputs)
from dept_core.sourcedata import load_sources

BUCKET_BYTES = 64 << 20  # body tensors are all_reduced in flat buckets of at most 64 MiB


def assign_sources(names: list[str], world: int, how: str = "round_robin"
                   ) -> list[list[str]]:
    """The sources of each rank: i -> i mod W, or contiguous blocks of near-equal size."""
    if world > len(names):
        raise ConfigError(f"torchrun: {world} ranks for {len(names)} training sources; "
                          f"use at most one rank per source (train.nproc_per_node)")
    if how == "round_robin":
        return [names[r::world] for r in range(world)]
    bounds = [round(r * len(names) / world) for r in range(world + 1)]
    return [names[bounds[r]:bounds[r + 1]] for r in range(world)]


class CollectiveExchange(Exchange):
    """`outer.Exchange` over a torch.distributed process group (partial sums + all_reduce).

    With replicas (`mesh`, a 2-D DeviceMesh sources × replicas; `dept_core.replicas`) the
    exchange runs over the source dimension only: ranks of the same replica index, one per
    source group. `groups` / `group_index` are then the source groups and this rank's one."""

    def __init__(self, device: torch.device, mesh=None):
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.device = device  # NCCL reduces CUDA tensors; Gloo CPU ones
        self.mesh = mesh
        self.group = None if mesh is None else mesh["source"].get_group()
        self.replicas = 1 if mesh is None else mesh["replica"].size()
        self.groups = self.world_size // self.replicas
        self.group_index = self.rank // self.replicas   # rank = g·R + r (row-major mesh)
        self.replica_index = self.rank % self.replicas
        self.wire = {"all_reduce_bytes": 0, "all_reduce_calls": 0}

    def _all_reduce(self, t: Tensor) -> Tensor:
        self.wire["all_reduce_bytes"] += t.numel() * t.element_size()
        self.wire["all_reduce_calls"] += 1
        if self.device.type == "cpu":
            dist.all_reduce(t, group=self.group)
            return t
        on_dev = t.to(self.device)
        dist.all_reduce(on_dev, group=self.group)
        return t.copy_(on_dev)

    def mean(self, like, deltas, weights, total):
        return self.means({"x": like}, [{"x": d} for d in deltas], weights, total)["x"]

    def means(self, params, deltas, weights, total):
        out: dict[str, Tensor] = {}
        for names in _buckets(params, BUCKET_BYTES):
            flat = torch.zeros(sum(params[n].numel() for n in names),
                               dtype=params[names[0]].dtype)
            views, offset = {}, 0
            for n in names:  # the same arithmetic as outer.weighted_sum, in place
                views[n] = flat[offset:offset + params[n].numel()].view_as(params[n])
                offset += params[n].numel()
                for d, w in zip(deltas, weights):
                    views[n].add_(d[n], alpha=float(w) / float(total))
            self._all_reduce(flat)
            out.update(views)
        return out

    def row_mean(self, like, deltas, rows, weights):
        acc, wsum = masked_row_sums(deltas, rows, weights, like)
        return finish_row_mean(self._all_reduce(acc), self._all_reduce(wsum))

    def gather(self, obj):
        """`obj` of every source group (one replica each: the same on every replica)."""
        out: list = [None] * self.groups
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def gather_world(self, obj):
        """`obj` of every rank."""
        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def gather_to_root(self, obj) -> list | None:
        if self.replica_index:  # replicas 1.. hold copies of what replica 0 sends
            return None
        out = [None] * self.groups if self.rank == 0 else None
        dist.gather_object(obj, out, dst=0, group=self.group)
        return out

    def stats(self) -> dict:
        return dict(self.wire)


def _buckets(params: dict[str, Tensor], limit: int) -> list[list[str]]:
    out: list[list[str]] = [[]]
    size = 0
    for n, p in params.items():
        b = p.numel() * p.element_size()
        if out[-1] and (size + b > limit or p.dtype != params[out[-1][0]].dtype):
            out.append([])
            size = 0
        out[-1].append(n)
        size += b
    return [names for names in out if names]


class _NullSink:
    def log(self, metrics, step):
        pass


def restore_agreed(run, rank_dir: Path, group: CollectiveExchange) -> None:
    """Restore the last round every rank finished (a crash can leave one rank a round
    ahead: it then rolls back to its previous checkpoint, kept by checkpoint_keep >= 2)."""
    latest = rank_dir / "latest.json"
    mine = json.loads(latest.read_text())["round"] if latest.is_file() else 0
    agreed = min(group.gather_world(mine))
    if agreed == 0:
        return
    if agreed != mine:
        if not (rank_dir / f"round-{agreed:06d}.json").is_file():
            raise DeptError(f"{rank_dir}: no checkpoint of round {agreed}, the last round every "
                            f"rank finished; delete the checkpoint directory to start afresh")
        write_json(latest, {"round": agreed})
    run.restore(rank_dir)


def train_distributed(cfg: Config, variant: str, prepared: Path, tok_root: Path,
                      ckpt_dir: Path | None, group: CollectiveExchange, device: torch.device,
                      sink=None, on_round=None) -> RunResult | None:
    """This rank's part of a run; rank 0 gets the RunResult (metrics, body, every bank)."""
    spec = variants.get(variant)
    if spec.centralised:
        raise DeptError(f"variant {variant} (centralised training) runs in-process only; "
                        f"use train.backend=inprocess for it")
    t, names = cfg.train, cfg.data.train_sources
    layout_ = assign_sources(names, group.groups, t.source_assignment)
    mine = layout_[group.group_index]
    data = load_sources(spec.tokenizer, mine, prepared, tok_root, t.seq_len)
    infos = {k: v for part in group.gather({k: s.info() for k, s in data.items()})
             for k, v in part.items()}
    vocab = global_vocab_size(tok_root)
    replicas = None
    if group.replicas > 1:
        from dept_core.replicas import Replicas

        replicas = Replicas(group.mesh["replica"], t.replica_strategy, device)
    run = build_run(cfg, variant, data, vocab, device, group, {k: infos[k] for k in names},
                    replicas)
    rank_dir = None
    if ckpt_dir is not None:
        mesh_tag = f"-x{group.replicas}" if group.replicas > 1 else ""
        rank_dir = Path(ckpt_dir) / f"torchrun-rank{group.rank}-of-{group.world_size}{mesh_tag}"
        restore_agreed(run, rank_dir, group)
    root = group.rank == 0
    train_loop(run, t.rounds, rank_dir, t.checkpoint_keep,
               (sink or _NullSink()) if root else _NullSink(), on_round if root else None)
    outcome = run.result()
    if outcome is None:
        return None
    result = finish(cfg, variant, outcome, vocab, device)
    result.metrics["comm"]["collective"] = {
        "all_reduce_bytes_per_rank": [p["all_reduce_bytes"] for p in outcome.exchange_stats],
        "all_reduce_calls_per_rank": [p["all_reduce_calls"] for p in outcome.exchange_stats]}
    result.metrics.update(backend="torchrun", world_size=group.world_size, assignment=layout_)
    if group.replicas > 1:
        result.metrics.update(replicas_per_source=group.replicas,
                              replica_strategy=t.replica_strategy)
    return result


def torchrun_command(params: Path, variant: str, root: Path, nproc: int,
                     torchrun_args: list[str] | None = None, emit_metrics: bool = True
                     ) -> list[str]:
    """The command that runs one variant's rounds under torchrun (`python -m
    torch.distributed.run` is the `torchrun` script of the same interpreter). Without
    `torchrun_args` a single node `--standalone` (a free local port: runs can overlap);
    with them, e.g. ["--nnodes", "2", "--node_rank", "0", "--rdzv_backend", "c10d",
    "--rdzv_endpoint", "host:29400", "--rdzv_id", "dept"], whatever they say."""
    launcher = list(torchrun_args) if torchrun_args else ["--standalone"]
    cmd = [sys.executable, "-m", "torch.distributed.run", *launcher,
           "--nproc_per_node", str(nproc), "-m", "dept_core.distributed",
           "--variant", variant, "--params", str(params), "--root", str(root)]
    return cmd + (["--emit-metrics"] if emit_metrics else [])


def init_group(cfg: Config) -> tuple[CollectiveExchange, torch.device]:
    """Join the process group torchrun describes in the environment (env://)."""
    device = accel.pick_device(cfg.train.device, int(os.environ.get("LOCAL_RANK", 0)))
    accel.tune_host_allocator(cfg)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(accel.dist_backend(device))
    t = cfg.train
    groups = check_layout(dist.get_world_size(), t.replicas_per_source,
                          len(cfg.data.train_sources))
    if t.replicas_per_source == 1:
        return CollectiveExchange(device), device
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device.type, (groups, t.replicas_per_source),
                            mesh_dim_names=("source", "replica"))
    return CollectiveExchange(device, mesh), device


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dept_core.distributed",
                                description="DEPT rounds of one variant on torch.distributed; "
                                            "start it with torchrun --nproc_per_node N.")
    p.add_argument("--variant", required=True,
                   choices=[v for v in variants.names() if not variants.get(v).centralised])
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--root", default=".", help="project root (data/, results/, checkpoints/)")
    p.add_argument("--out", help="output dir (default: <root>/results/pretrain/<variant>)")
    p.add_argument("--no-checkpoints", action="store_true", help="do not save or resume")
    p.add_argument("--no-export", action="store_true", help="skip the per-source HF models")
    p.add_argument("--dump", help="also save the final body and banks to this safetensors file")
    p.add_argument("--emit-metrics", action="store_true",
                   help="print one 'DEPT_METRICS <json>' line per round (tasks/train.py)")
    return p


class EmitSink:
    """Prints one `DEPT_METRICS <json>` line per round on stdout (a launcher reads them:
    tasks/train.py logs them to MLflow while the run goes on)."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        print("DEPT_METRICS " + json.dumps({"step": step, "metrics": metrics}), flush=True)


def print_round(rounds: int, sources: list[str]):
    def on_round(record: dict) -> None:
        print(round_line(record, rounds, sources), flush=True)
    return on_round


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    root = Path(args.root).resolve()
    try:
        params = Path(args.params)
        cfg = load_config(params if params.is_absolute() else root / params, args.overrides)
        group, device = init_group(cfg)
        try:
            return _run(args, cfg, root, group, device)
        finally:
            dist.destroy_process_group()
    except DeptError as exc:
        print(f"dept: error: {exc}", file=sys.stderr)
        return 2


def _run(args, cfg: Config, root: Path, group: CollectiveExchange, device) -> int:
    prepared, tok_root = layout.prepared(root), layout.tokenizers(root)
    ckpt = None if args.no_checkpoints else \
        layout.checkpoint_dir(root, args.variant, run_key(cfg, args.variant, prepared, tok_root))
    result = train_distributed(cfg, args.variant, prepared, tok_root, ckpt, group, device,
                               EmitSink() if args.emit_metrics else None,
                               print_round(cfg.train.rounds, cfg.data.train_sources))
    if result is None:
        return 0
    out = Path(args.out) if args.out else layout.pretrain_dir(root, args.variant, cfg.train.seed)
    write_outputs(cfg, result, tok_root, out, export=not args.no_export)
    if args.dump:
        from safetensors.torch import save_file

        save_file({**{f"body/{k}": v.contiguous() for k, v in result.body.items()},
                   **{f"bank/{s}/{c}": t.contiguous() for s, b in result.banks.items()
                      for c, t in b.items()}}, args.dump)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
