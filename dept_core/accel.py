"""The GPU path: the device choice (per rank), pinned-memory batches, optional torch.compile;
on the CPU, the host allocator's thresholds (`tune_host_allocator`).

Wrapping, kept apart from the model definition (model.py) as torchtitan keeps `parallelize`
apart from `model`. The rest of the GPU path lives where it is used: bf16 autocast on CUDA
only (`trainer.autocast_for`), fused AdamW on CUDA only (`trainer.make_optimizer`).
Embeddings of the sources that are not training right now never sit on the GPU: the policies
keep every bank on the CPU (`rounds._train_source` returns `.cpu()` copies) and `set_bank`
moves only the active source's bank to the device.
Nothing here calls a CUDA-only API unless the device is CUDA (tests/test_distributed.py).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from dept_core.batches import BatchSampler
from dept_core.config import Config
from dept_core.errors import ConfigError
from dept_core.trainer import EVAL_BATCH


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

    def next(self, n: int | None = None, rows: slice | None = None) -> Tensor:
        return self.inner.next(n, rows=rows).pin_memory()

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
    """The repeated blocks of a Llama (`model.layers`), GPT-2 (`transformer.h`) or MPT
    (`transformer.blocks`) model."""
    inner = getattr(model, "model", None) or getattr(model, "transformer")
    for name in ("layers", "h", "blocks"):
        if isinstance(getattr(inner, name, None), torch.nn.ModuleList):
            return getattr(inner, name)
    raise ValueError(f"no transformer blocks found in {type(model).__name__}")


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


_MiB = 1 << 20
_ALLOCATOR_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
                  "GLIBC_TUNABLES", "LD_PRELOAD")
_allocator_tuned: dict | None = None


def allocator_thresholds(cfg: Config) -> tuple[int, int]:
    """(mmap threshold, trim threshold) in bytes for this configuration.

    The largest transients of the CPU loops are a batch's logits, their gradient and their
    log-softmax, batch x seq_len x vocabulary fp32 values each; the largest batch is STD's and
    CPT's (`sources_per_round x batch_size` sequences) or an evaluation batch (16 windows).
    Demo: 48 x 128 x 6000 x 4 B = 147 MB. glibc's own threshold stops growing at 32 MiB, so
    every such tensor was a fresh mmap, unmapped when freed and faulted in again page by page
    on the next step (measured: ~8 M minor faults and ~14 s of kernel time in 27 s of
    benchmarks/throughput.py). The threshold is the next power of two above 1.25 x the
    logits (64 MiB to 1 GiB), so they come from the heap and are reused; the trim threshold
    (4x: logits, gradient, log-softmax and slack) keeps that much free heap instead of
    returning it to the OS after every step. Cost: up to the trim threshold of resident
    memory held in reserve."""
    vocab = max(cfg.tokenizers.global_vocab_size, cfg.tokenizers.per_source_vocab_size,
                *cfg.tokenizers.per_source_vocab_overrides.values())
    batch = max(cfg.train.batch_size * cfg.train.sources_per_round, cfg.train.batch_size,
                EVAL_BATCH)
    logits = batch * cfg.train.seq_len * vocab * 4
    mmap = 64 * _MiB
    while mmap < 1.25 * logits and mmap < 1024 * _MiB:
        mmap *= 2
    return mmap, 4 * mmap


def tune_host_allocator(cfg: Config) -> dict | None:
    """Set glibc's mmap and trim thresholds for the CPU inner loop (`allocator_thresholds`),
    once per process; returns what was set, or None when nothing was.

    Beyond the paper (an engineering choice, no effect on any number the pipeline computes:
    the same tensors, elsewhere in memory). Left alone when the user chose for themselves
    (MALLOC_*_ / GLIBC_TUNABLES / LD_PRELOAD set), when DEPT_HOST_ALLOCATOR=default, and where
    there is no glibc `mallopt` (macOS; musl's is a no-op)."""
    global _allocator_tuned
    if _allocator_tuned is not None:
        return _allocator_tuned or None
    _allocator_tuned = {}
    if (os.environ.get("DEPT_HOST_ALLOCATOR", "tuned") == "default"
            or any(os.environ.get(k) for k in _ALLOCATOR_ENV)):
        return None
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    mmap, trim = allocator_thresholds(cfg)
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
    if mallopt(M_MMAP_THRESHOLD, mmap) == 1 and mallopt(M_TRIM_THRESHOLD, trim) == 1:
        _allocator_tuned = {"mmap_threshold": mmap, "trim_threshold": trim}
    return _allocator_tuned or None


def deterministic(seed: int) -> None:
    """Evaluation that repeats bit for bit on the same machine: torch's deterministic
    algorithms where it has them (cheap on CPU: the kernels used here are deterministic
    already; on CUDA it picks deterministic kernels), the global RNG seeded (nothing here
    should draw from it: every sampler has its own generator), and the thread count left as
    it is — a CPU reduction's result depends on it, so runs compare only on one setting."""
    import os

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(seed)
