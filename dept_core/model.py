"""The transformer, split into a **body** (shared, averaged) and an **embedding bank**.

The bank holds what DEPT decouples from the body (paper §3): the token embeddings `tok`
(tied to the output layer, as in the paper), the positional table `pos` when the model has one
(GPT-2 family; the paper's ALiBi models — family `mpt` here — have none, but Algorithm 1
specialises ψ), and the output layer `head` when it is untied (beyond the paper, offered for
completeness).

One working model is reused for every source: its bank parameters are swapped per source
(vocabulary sizes differ between sources under TRIM, SPEC and SPEC-OPT).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM,
                          MptConfig, MptForCausalLM, PreTrainedModel)

from dept_core.config import ModelConfig

SPECIAL_IDS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=3)
INIT_STD = 0.02
ROW_COMPONENTS = ("tok", "head")  # bank components indexed by vocabulary id


def hf_config(mcfg: ModelConfig, vocab_size: int):
    d = mcfg.dims()
    if mcfg.family == "llama":
        return LlamaConfig(
            vocab_size=vocab_size, hidden_size=d["d_model"], intermediate_size=d["d_ff"],
            num_hidden_layers=d["n_layers"], num_attention_heads=d["n_heads"],
            num_key_value_heads=d["n_heads"], max_position_embeddings=mcfg.max_seq_len,
            tie_word_embeddings=mcfg.tie_embeddings, initializer_range=INIT_STD,
            attention_dropout=0.0, **SPECIAL_IDS,
        )
    if mcfg.family == "mpt":
        # The paper's models (§4: MosaicML MPT, ALiBi positions): MPT blocks as transformers
        # implements them — ALiBi attention biases (no positional parameters, so nothing
        # positional in the bank), LayerNorm without bias, a GELU MLP of d_ff = ratio × d.
        return MptConfig(
            vocab_size=vocab_size, d_model=d["d_model"], n_heads=d["n_heads"],
            n_layers=d["n_layers"], expansion_ratio=d["d_ff"] // d["d_model"],
            max_seq_len=mcfg.max_seq_len, tie_word_embeddings=mcfg.tie_embeddings,
            initializer_range=INIT_STD, resid_pdrop=0, emb_pdrop=0,
            attn_config={"alibi": True}, use_cache=False, **SPECIAL_IDS,
        )
    return GPT2Config(
        vocab_size=vocab_size, n_embd=d["d_model"], n_layer=d["n_layers"], n_head=d["n_heads"],
        n_inner=d["d_ff"], n_positions=mcfg.max_seq_len, tie_word_embeddings=mcfg.tie_embeddings,
        initializer_range=INIT_STD, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        **SPECIAL_IDS,
    )


def build_model(mcfg: ModelConfig, vocab_size: int, seed: int) -> PreTrainedModel:
    """A freshly initialised causal LM; the same seed gives the same body for every variant."""
    cls = {"llama": LlamaForCausalLM, "gpt2": GPT2LMHeadModel, "mpt": MptForCausalLM}[mcfg.family]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(hf_config(mcfg, vocab_size))
    return model.train()


def _pos_module(model: PreTrainedModel) -> nn.Embedding | None:
    return model.transformer.wpe if isinstance(model, GPT2LMHeadModel) else None


def _tied(model: PreTrainedModel) -> bool:
    return model.get_output_embeddings().weight is model.get_input_embeddings().weight


def bank_param_ids(model: PreTrainedModel) -> set[int]:
    ids = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    if _pos_module(model) is not None:
        ids.add(id(_pos_module(model).weight))
    return ids


def body_names(model: PreTrainedModel) -> list[str]:
    bank = bank_param_ids(model)
    return [n for n, p in model.named_parameters() if id(p) not in bank]


def get_body(model: PreTrainedModel) -> dict[str, Tensor]:
    """A detached copy of every body parameter, by name."""
    params = dict(model.named_parameters())
    return {n: params[n].detach().clone() for n in body_names(model)}


@torch.no_grad()
def load_body(model: PreTrainedModel, body: dict[str, Tensor]) -> None:
    params = dict(model.named_parameters())
    for name, value in body.items():
        params[name].copy_(value)


def get_bank(model: PreTrainedModel) -> dict[str, Tensor]:
    bank = {"tok": model.get_input_embeddings().weight.detach().clone()}
    if not _tied(model):
        bank["head"] = model.get_output_embeddings().weight.detach().clone()
    if _pos_module(model) is not None:
        bank["pos"] = _pos_module(model).weight.detach().clone()
    return bank


def set_bank(model: PreTrainedModel, bank: dict[str, Tensor]) -> None:
    """Install a source's bank (copied), resizing the vocabulary to its number of rows."""
    device = next(model.parameters()).device
    tied = model.config.tie_word_embeddings
    emb = model.get_input_embeddings()
    emb.weight = nn.Parameter(bank["tok"].detach().clone().to(device))
    emb.num_embeddings = bank["tok"].shape[0]
    out = model.get_output_embeddings()
    out.weight = emb.weight if tied else nn.Parameter(bank["head"].detach().clone().to(device))
    out.out_features = bank["tok"].shape[0]
    model.config.vocab_size = bank["tok"].shape[0]
    if "pos" in bank:
        _pos_module(model).weight = nn.Parameter(bank["pos"].detach().clone().to(device))


def init_bank(mcfg: ModelConfig, vocab_size: int, generator: torch.Generator) -> dict[str, Tensor]:
    """A fresh random bank (N(0, 0.02) like the HF initialisers) — SPEC's first sampling."""
    d = mcfg.dims()["d_model"]
    bank = {"tok": torch.randn(vocab_size, d, generator=generator) * INIT_STD}
    if not mcfg.tie_embeddings:
        bank["head"] = torch.randn(vocab_size, d, generator=generator) * INIT_STD
    if mcfg.family == "gpt2":
        bank["pos"] = torch.randn(mcfg.max_seq_len, d, generator=generator) * INIT_STD
    return bank


def numel(tensors: dict[str, Tensor]) -> int:
    return sum(t.numel() for t in tensors.values())


def nbytes(tensors: dict[str, Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def lm_loss(model: PreTrainedModel, batch: Tensor) -> tuple[Tensor, int]:
    """Summed next-token cross-entropy (nats) over `batch[:, 1:]` and the token count.

    Targets equal to -100 (padding) are ignored.
    """
    inputs = batch[:, :-1].clamp_min(0)
    targets = batch[:, 1:]
    logits = model(input_ids=inputs).logits
    loss = nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
        ignore_index=-100, reduction="sum",
    )
    return loss, int((targets != -100).sum())


def token_nll(model: PreTrainedModel, batch: Tensor) -> Tensor:
    """Next-token cross-entropy (nats) of every target `batch[:, 1:]`; 0 where the target is
    -100 (padding). Shape (batch, seq_len)."""
    inputs = batch[:, :-1].clamp_min(0)
    targets = batch[:, 1:]
    logits = model(input_ids=inputs).logits
    nll = nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
        ignore_index=-100, reduction="none",
    )
    return nll.view(targets.shape)


def lr_at(step: int, total: int, peak: float, warmup: int, min_ratio: float) -> float:
    """Linear warm-up then cosine decay to `min_ratio * peak`, over the global step count."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
