"""The one inner loop: optimiser steps on batches from a batch source.

`local_train` serves every training in the project: a DEPT source's local round, the STD
baseline's steps on the mixture, continued pre-training, plasticity and downstream
fine-tuning. What differs is passed in: the batch source (`.next()`), the loss function and
the learning-rate schedule.

Gradient accumulation (`micro_batch`): one optimiser step still takes the whole batch the
source hands out (at paper scale the recipe's 256-512 sequences of 2048 tokens), in
forward/backward passes of at most `micro_batch` rows, so the batch need not fit one device.
The gradient is the one of the whole batch: summed losses, divided once by the whole batch's
count before clipping. Not in the paper (it does not say how its batches were laid out).
"""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
from torch import Tensor

from dept_core import interrupt
from dept_core.config import TrainConfig
from dept_core.metrics import bits_per_byte, perplexity
from dept_core.batches import EvalSet
from dept_core.model import lm_loss, token_nll


class MetricsSink(Protocol):
    """Where metrics go (MLflow in tasks/, a list in tests): `log(metrics, step)`."""

    def log(self, metrics: dict[str, float], step: int) -> None: ...


class MemorySink:
    def __init__(self) -> None:
        self.rows: list[tuple[int, dict[str, float]]] = []

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.rows.append((step, dict(metrics)))


class BatchSource(Protocol):
    """Anything that hands out training batches: `BatchSampler`, `MixtureSampler`, ..."""

    def next(self) -> Any: ...


#: (model, batch on the device) -> (summed loss, count); the step minimises loss / count
LossFn = Callable[[torch.nn.Module, Any], tuple[Tensor, int]]


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA; full precision on CPU (bf16 matmuls are slow on most CPUs)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def make_optimizer(model: torch.nn.Module, tcfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices (embeddings included), none on norms and biases."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    fused = next(model.parameters()).device.type == "cuda"
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": tcfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=tcfg.lr, betas=tuple(tcfg.betas), fused=fused or None,
    )


@dataclass
class LocalStats:
    loss: float  # mean loss per counted unit (nats per token for a language model)
    tokens: int  # counted units (tokens for a language model)
    seconds: float
    step_losses: list[float]  # each step's loss / count

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


def to_device(batch, device: torch.device):
    """A tensor, or a tuple of tensors, on `device` (asynchronously from pinned memory)."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    return tuple(to_device(b, device) for b in batch)


def split_batch(batch, micro: int | None) -> list:
    """`batch` (a tensor, or a tuple of tensors sharing dim 0) in chunks of at most `micro`
    rows; `[batch]` when `micro` is None or not smaller than the batch."""
    rows = (batch if isinstance(batch, Tensor) else batch[0]).shape[0]
    if not micro or micro >= rows:
        return [batch]
    if isinstance(batch, Tensor):
        return list(batch.split(micro))
    return [tuple(parts) for parts in zip(*(b.split(micro) for b in batch))]


@contextmanager
def grad_sync(model: torch.nn.Module, enabled: bool):
    """A context in which backward does (not) all-reduce gradients across data-parallel
    replicas: DDP's `no_sync`, FSDP2's `set_requires_gradient_sync`; nothing for a plain
    module. Accumulating micro-batches synchronise on the last one only."""
    if enabled or not hasattr(model, "no_sync") and \
            not hasattr(model, "set_requires_gradient_sync"):
        yield
    elif hasattr(model, "no_sync"):  # DistributedDataParallel
        with model.no_sync():
            yield
    else:  # FSDP2 (fully_shard)
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)


def _accumulate(model, chunks: list, device: torch.device, loss_fn: LossFn) -> tuple:
    """Backward over every micro-batch, then the gradient of the whole batch's mean loss:
    sum_j grad(loss_j) / sum_j n_j, exactly what one pass over the whole batch gives."""
    total, count = 0.0, 0
    for j, chunk in enumerate(chunks):
        with grad_sync(model, j == len(chunks) - 1):  # (DDP: forward and backward inside)
            with autocast_for(device):
                loss, n = loss_fn(model, to_device(chunk, device))
            loss.backward()
        total, count = total + loss.detach(), count + n
    for p in model.parameters():
        if p.grad is not None:
            p.grad.div_(count)
    return total, count


def _replica_step(model, chunks: list, device: torch.device, loss_fn: LossFn,
                  replicas) -> tuple:
    """One step's backward on this replica's rows (`dept_core.replicas`): summed losses
    back-propagated (DDP/FSDP2 average them over the replicas on the last micro-batch), then
    scaled to the gradient of the whole batch's mean loss."""
    total, count = 0.0, 0
    for j, chunk in enumerate(chunks):
        with grad_sync(model, j == len(chunks) - 1):
            with autocast_for(device):
                loss, n = loss_fn(model, to_device(chunk, device))
            loss.backward()
        total, count = total + loss.detach(), count + n
    total, count = replicas.whole_batch(total, count)
    replicas.scale_gradients(model, count)
    return total, count


def local_train(model, opt, batches: BatchSource, steps: int, first_step: int,
                lr_at: Callable[[int], float], grad_clip: float, device: torch.device,
                loss_fn: LossFn = lm_loss, micro_batch: int | None = None,
                replicas=None) -> LocalStats:
    """`steps` optimiser steps; the learning rate follows the global step count
    (`lr_at(first_step + i)`). The default loss is next-token cross-entropy. `micro_batch`:
    at most this many rows per forward/backward pass (gradient accumulation; None: the whole
    batch in one pass). `replicas` (`dept_core.replicas.Replicas`): `model` is this
    replica's DDP/FSDP2 module, `batches` hands out this replica's rows; the losses and
    counts reported are the whole batch's."""
    loss_sum, tok_sum, start, step_losses = 0.0, 0, time.perf_counter(), []
    for i in range(steps):
        interrupt.check()  # Ctrl-C / SIGTERM: stop before the next step
        lr = lr_at(first_step + i)
        for group in opt.param_groups:
            group["lr"] = lr
        chunks = split_batch(batches.next(), micro_batch)
        if replicas is not None:
            loss, n = _replica_step(model, chunks, device, loss_fn, replicas)
        elif len(chunks) == 1:  # one pass: the path (and the bits) of a run without accumulation
            batch = to_device(chunks[0], device)
            with autocast_for(device):
                loss, n = loss_fn(model, batch)
            (loss / n).backward()
        else:
            loss, n = _accumulate(model, chunks, device, loss_fn)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        value = float(loss.detach())
        loss_sum += value
        tok_sum += n
        step_losses.append(value / n)
    return LocalStats(loss_sum / max(tok_sum, 1), tok_sum, time.perf_counter() - start,
                      step_losses)


EVAL_BATCH = 16  # evaluation windows per forward pass


@torch.no_grad()
def evaluate_set(model, ev: EvalSet, device: torch.device, batch: int = EVAL_BATCH,
                 per_doc: bool = False) -> dict:
    """Loss (nats/token), perplexity and bits per UTF-8 byte over an evaluation set; with
    `per_doc`, also each document's summed loss, tokens and bytes (`docs`), the unit every
    paired comparison and interval is built from (`dept_core.stats`)."""
    was_training = model.training
    model.eval()
    doc_loss = torch.zeros(ev.n_docs, dtype=torch.float64)
    doc_tokens = torch.zeros(ev.n_docs, dtype=torch.long)
    for i in range(0, len(ev.windows), batch):
        interrupt.check()
        with autocast_for(device):
            nll = token_nll(model, ev.windows[i:i + batch].to(device))
        owner = ev.doc_of[i:i + batch]
        held = owner >= 0
        doc_loss.index_add_(0, owner[held], nll.float().cpu()[held].double())
        doc_tokens.index_add_(0, owner[held], torch.ones(int(held.sum()), dtype=torch.long))
    model.train(was_training)
    total, count = float(doc_loss.sum()), int(doc_tokens.sum())
    out = {"loss": total / max(count, 1), "ppl": perplexity(total, count),
           "bpb": bits_per_byte(total, ev.n_bytes), "tokens": count, "bytes": ev.n_bytes}
    if per_doc:
        out["docs"] = {"loss": doc_loss.tolist(), "tokens": doc_tokens.tolist(),
                       "bytes": list(ev.doc_bytes)}
    return out


def first_nonfinite(tensors: dict[str, Tensor]) -> str | None:
    """The name of the first tensor holding NaN/Inf, or None when all are finite."""
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            return name
    return None
