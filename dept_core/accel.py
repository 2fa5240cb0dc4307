"""The GPU path: the device choice (per rank), pinned-memory batches, optional torch.compile.

Wrapping, kept apart from the model definition (model.py) as torchtitan keeps `parallelize`
apart from `model`. The rest of the GPU path lives where it is used: bf16 autocast on CUDA
only (`trainer.autocast_for`), fused AdamW on CUDA only (`trainer.make_optimizer`).
Embeddings of the sources that are not training right now never sit on the GPU: the policies
keep every bank on the CPU (`rounds._train_source` returns `.cpu()` copies) and `set_bank`
moves only the active source's bank to the device.
Nothing here calls a CUDA-only API unless the device is CUDA (tests/test_distributed.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from dept_core.batches import BatchSampler
from dept_core.config import Config
from dept_core.errors import ConfigError


def pick_device(pref: str = "auto", local_rank: int | None = None,
                cuda_available: bool | None = None) -> torch.device:
    """`train.device` resolved: CUDA when chosen (auto: when present), else the CPU.

    With `local_rank` (a torchrun rank) the device is `cuda:<local_rank>`.
    """
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if pref == "cuda" and not cuda_available:
        raise ConfigError("train.device: 'cuda', but CUDA is not available on this machine "
                          "(use auto or cpu)")
    if pref == "cpu" or not cuda_available:
        return torch.device("cpu")
    return torch.device("cuda") if local_rank is None else torch.device("cuda", local_rank)


def dist_backend(device: torch.device) -> str:
    """NCCL between GPUs, Gloo between CPU processes."""
    return "nccl" if device.type == "cuda" else "gloo"


class PinnedSampler:
    """A BatchSampler whose batches come in page-locked memory, so that
    `batch.to(cuda, non_blocking=True)` in the inner loop is a real asynchronous copy."""

    def __init__(self, inner: BatchSampler):
        self.inner = inner

    def next(self, n: int | None = None) -> Tensor:
        return self.inner.next(n).pin_memory()

    def state(self) -> Tensor:
        return self.inner.state()

    def set_state(self, state: Tensor) -> None:
        self.inner.set_state(state)


def pin_samplers(samplers: dict, device: torch.device) -> dict:
    """Pinned batches on CUDA; unchanged on CPU (pinning needs a CUDA driver)."""
    if device.type != "cuda":
        return samplers
    return {k: s if isinstance(s, PinnedSampler) else PinnedSampler(s)
            for k, s in samplers.items()}


def transformer_blocks(model) -> torch.nn.ModuleList:
    """The repeated blocks of a Llama (`model.layers`) or GPT-2 (`transformer.h`) model."""
    inner = getattr(model, "model", None) or getattr(model, "transformer")
    return getattr(inner, "layers", None) or inner.h


def compile_blocks(model, **kwargs) -> int:
    """torch.compile each transformer block in place (not the whole model: the embedding
    bank is swapped per source with a different vocabulary size, which would recompile)."""
    blocks = transformer_blocks(model)
    for block in blocks:
        block.compile(**kwargs)
    return len(blocks)


def prepare(model, samplers: dict, cfg: Config, device: torch.device) -> dict:
    """Place and wrap the working model for `device`; the batch samplers to use there."""
    model.to(device)
    if cfg.train.compile:
        compile_blocks(model)
    return pin_samplers(samplers, device)
