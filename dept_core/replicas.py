"""Data-parallel replicas inside a source group (torchrun, `train.replicas_per_source` > 1).

Beyond the paper: it does not say how a source's local training was laid out over GPUs;
this is how one source spans several GPUs here.

The world is a 2-D `DeviceMesh` (sources × replicas), ranks row-major: rank = g·R + r, so
the R replicas of source group g are adjacent ranks (on one node: their per-step gradient
reduction stays on the node's links; the once-per-round outer step crosses nodes).

* `mesh["source"]`: the ranks holding the same replica index r of every group. DEPT's
  exchange (`dept_core.distributed.CollectiveExchange`) runs over this dimension only, once
  per round: each replica index computes the same outer step, so every rank ends the round
  with the same θ and server bank.
* `mesh["replica"]`: the R ranks of one source group. They hold the same sources, samplers
  (same seeds, same state) and server state; each inner step every replica draws the whole
  batch of `train.batch_size` sequences and trains on its own 1/R of the rows, and the
  gradient is reduced over this dimension by PyTorch's data parallelism:
    - `ddp`: `DistributedDataParallel` over the replica group (each replica holds the
      model; enough up to the 1.3B preset on 80 GB cards);
    - `fsdp2`: `fully_shard` per transformer block and at the root over the replica mesh:
      weights, gradients and AdamW state are sharded, embeddings included. A source's bank
      is installed in the plain model first (TRIM's |V_k| rows, SPEC's private bank), the
      sharded copy trains, and the full weights come back through
      `torch.distributed.checkpoint.state_dict` — so TRIM's masked row average and SPEC's
      private banks see exactly what an unsharded run sees.
  Gradient: each replica back-propagates its summed loss, DDP/FSDP2 average over the R
  replicas, and the step then scales by R / (tokens of the whole batch, all_reduced): the
  gradient of the whole batch's mean loss, as one process with the whole batch computes it
  (`trainer.local_train`; tests/test_replicas.py).

A new DDP/FSDP2 wrapper is built for every local round because the bank's parameters are
swapped per source (their vocabulary sizes differ); building one is cheap next to N_local
steps.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from dept_core.errors import ConfigError


def check_layout(world: int, replicas: int, n_sources: int, nproc_per_node: int | None = None
                 ) -> int:
    """The number of source groups of a torchrun world, or a one-line refusal."""
    if world % replicas:
        raise ConfigError(f"train.replicas_per_source: {replicas} does not divide the {world} "
                          f"torchrun ranks (the world is source groups × replicas)")
    if nproc_per_node is not None and nproc_per_node % replicas:
        raise ConfigError(f"train.replicas_per_source: {replicas} does not divide "
                          f"train.nproc_per_node {nproc_per_node} (a source's replicas share "
                          f"one node)")
    groups = world // replicas
    if groups > n_sources:
        raise ConfigError(f"torchrun: {world} ranks / {replicas} replicas = {groups} source "
                          f"groups for {n_sources} training sources; use at most one group "
                          f"per source (train.nproc_per_node, train.replicas_per_source)")
    return groups


class ReplicaSlice:
    """This replica's rows of each batch a batch source hands out (the whole batch is drawn
    on every replica, so the samplers' states stay equal and resume exactly). A
    `BatchSampler` (or its pinned wrapper) reads only those rows from its stream — from a
    memory-mapped token store, only those pages."""

    def __init__(self, inner, index: int, size: int):
        self.inner, self.index, self.size = inner, index, size

    def next(self):
        size = getattr(self.inner, "batch_size", None) or \
            getattr(getattr(self.inner, "inner", None), "batch_size", None)
        if size is not None:
            share = size // self.size
            return self.inner.next(rows=slice(self.index * share, (self.index + 1) * share))
        batch = self.inner.next()
        rows = (batch if isinstance(batch, Tensor) else batch[0]).shape[0]
        share = rows // self.size
        lo, hi = self.index * share, (self.index + 1) * share
        if isinstance(batch, Tensor):
            return batch[lo:hi]
        return tuple(b[lo:hi] for b in batch)


@dataclass
class Replicas:
    """The replica dimension of this rank: its mesh, process group, index and strategy."""

    mesh: object  # a 1-D DeviceMesh
    strategy: str
    device: torch.device

    @property
    def size(self) -> int:
        return self.mesh.size()

    @property
    def index(self) -> int:
        return self.mesh.get_local_rank()

    @property
    def group(self):
        return self.mesh.get_group()

    def slice(self, batches) -> ReplicaSlice:
        return ReplicaSlice(batches, self.index, self.size)

    # --- one local round --------------------------------------------------------------------
    def wrap(self, model: nn.Module) -> nn.Module:
        """The module a local round trains: DDP around `model`, or a sharded copy of it."""
        if self.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            # replicas hold equal weights already (same θ, same bank): no broadcast needed
            return DistributedDataParallel(model, device_ids=ids, process_group=self.group,
                                           broadcast_buffers=False, init_sync=False)
        from torch.distributed.fsdp import fully_shard

        from dept_core.accel import transformer_blocks

        work = copy.deepcopy(model)
        for block in transformer_blocks(work):
            fully_shard(block, mesh=self.mesh)
        fully_shard(work, mesh=self.mesh)  # the root unit: embeddings, head, final norm
        return work

    def write_back(self, model: nn.Module, work: nn.Module) -> None:
        """After the round: the trained weights in the plain `model` (FSDP2: gathered)."""
        if self.strategy == "ddp":
            return
        from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                             get_model_state_dict)

        full = get_model_state_dict(work, options=StateDictOptions(full_state_dict=True))
        missing, unexpected = model.load_state_dict(full, strict=False)
        tied = {n for n, _ in model.named_parameters(remove_duplicate=False)} - \
            {n for n, _ in model.named_parameters()}
        if unexpected or set(missing) - tied:
            raise RuntimeError(f"FSDP2 state does not match the model: missing {missing}, "
                               f"unexpected {unexpected}")

    def optimizer_state(self, work: nn.Module, opt) -> dict:
        """The inner AdamW state to keep across rounds, whole (FSDP2: gathered; keyed by
        parameter name, so the next round's new sharded copy can take it)."""
        if self.strategy == "ddp":
            return opt.state_dict()
        from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                             get_optimizer_state_dict)

        return get_optimizer_state_dict(work, opt,
                                        options=StateDictOptions(full_state_dict=True))

    def load_optimizer_state(self, work: nn.Module, opt, state: dict) -> None:
        if self.strategy == "ddp":
            opt.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                             set_optimizer_state_dict)

        set_optimizer_state_dict(work, opt, state,
                                 options=StateDictOptions(full_state_dict=True))

    # --- one inner step ---------------------------------------------------------------------
    def whole_batch(self, loss_sum: Tensor, count: int) -> tuple[Tensor, int]:
        """The summed loss and count of the whole batch (every replica's share)."""
        both = torch.stack([loss_sum.detach().double().reshape(()),
                            torch.tensor(float(count), dtype=torch.float64,
                                         device=loss_sum.device)])
        on = both.to(self.device) if self.device.type == "cuda" else both.cpu()
        dist.all_reduce(on, group=self.group)
        return on[0], int(on[1].item())

    def scale_gradients(self, model: nn.Module, total_count: int) -> None:
        """DDP/FSDP2 averaged the replicas' gradients of their summed losses; × R / count
        makes it the gradient of the whole batch's mean loss."""
        scale = self.size / max(total_count, 1)
        for p in model.parameters():
            if p.grad is not None:
                p.grad.mul_(scale)
