"""Typed, strict configuration: one model per params.yaml section.

Unknown keys, wrong types and out-of-range values are errors that name the key and the value
(nanoGPT's configurator refuses unknown keys; every field here carries a description).
`load_config(path, overrides)` is the only entry point the rest of the code needs.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dept_core import variants

NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# ----------------------------------------------------------------------------------- data ----
class EmbeddedSource(Section):
    """A source from the corpus shipped in `corpus/` (built by scripts/build_corpus.py)."""

    kind: Literal["embedded"]
    name: str = Field(pattern=NAME_RE, description="unique source name")
    preset: Literal["multilingual", "multidomain"] = Field(description="embedded preset")
    item: str | None = Field(None, description="file in the preset (default: the name)")
    heldout: bool = Field(False, description="out-of-distribution: evaluated, never trained on")


class FilesSource(Section):
    """Local files: globs of UTF-8 text files (one document each) or JSON-lines files."""

    kind: Literal["files"]
    name: str = Field(pattern=NAME_RE)
    paths: list[str] = Field(min_length=1, description="globs, relative to the project root")
    format: Literal["text", "jsonl"] = Field("text", description="text: a file is a document")
    text_field: str = Field("text", description="jsonl: the field holding the text")
    heldout: bool = False


class HFSource(Section):
    """A Hugging Face `datasets` dataset, streamed (Pile subsets, mC4 languages, ...).

    Needs a network unless `dataset` is a local builder (json/parquet/text + data_files).
    """

    kind: Literal["hf"]
    name: str = Field(pattern=NAME_RE)
    dataset: str = Field(description="dataset name or local builder (json, parquet, text)")
    config: str | None = Field(None, description="dataset configuration (e.g. an mC4 language)")
    split: str = "train"
    text_field: str = "text"
    data_files: list[str] | None = Field(None, description="local files for json/parquet/text")
    streaming: bool = True
    heldout: bool = False


Source = Annotated[Union[EmbeddedSource, FilesSource, HFSource], Field(discriminator="kind")]


class DataConfig(Section):
    sources: list[Source] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> "DataConfig":
        seen: set[str] = set()
        for src in self.sources:
            if src.name in seen:
                raise ValueError(f"duplicate source name '{src.name}'")
            seen.add(src.name)
        if not [s for s in self.sources if not s.heldout]:
            raise ValueError("every source is heldout: at least one must be trained on")
        return self

    @property
    def train_sources(self) -> list[str]:
        return [s.name for s in self.sources if not s.heldout]

    @property
    def heldout_sources(self) -> list[str]:
        return [s.name for s in self.sources if s.heldout]


class PrepareConfig(Section):
    """How each source is split. Validation and test sizes are absolute (UTF-8 bytes of whole
    documents per source), so every source is measured on a sample of the same size whatever
    its length or the cap, and every variant on exactly the same documents."""

    val_bytes: int = Field(20_000, gt=0, description="validation text per source (whole "
                           "documents, at least one)")
    test_bytes: int = Field(60_000, gt=0, description="test text per source (whole "
                            "documents, at least one); never seen in training or tuning")
    min_train_bytes: int = Field(10_000, gt=0, description="a source with less training text "
                                 "left after val and test is an error")
    min_doc_chars: int = Field(50, ge=1, description="shorter documents are dropped")
    max_bytes_per_source: int | None = Field(None, gt=0, description="read at most this much "
                                             "text of a source (UTF-8 bytes; all splits)")


class TokenizersConfig(Section):
    model_type: Literal["unigram", "bpe"] = "unigram"
    global_vocab_size: int = Field(8000, ge=300)
    sample_bytes_per_source: int = Field(
        300_000, gt=0, description="cap per source in the global tokenizer's training sample"
    )
    per_source_vocab_size: int = Field(4000, ge=300, description="SPEC-OPT tokenizers")
    per_source_vocab_overrides: dict[str, int] = Field(default_factory=dict)
    subvocab_min_count: int = Field(1, ge=1, description="V_k: tokens seen this often")
    character_coverage: float = Field(0.9995, gt=0.9, le=1.0)


# ---------------------------------------------------------------------------------- model ----
SIZES: dict[str, dict[str, int]] = {
    # name: d_model, n_layers, n_heads, d_ff. "paper-*" are the paper's shapes (§4, Table 2).
    "tiny": dict(d_model=64, n_layers=2, n_heads=2, d_ff=128),
    "demo": dict(d_model=96, n_layers=3, n_heads=4, d_ff=256),
    "paper-125m": dict(d_model=768, n_layers=12, n_heads=12, d_ff=3072),
    "paper-350m": dict(d_model=1024, n_layers=24, n_heads=16, d_ff=4096),
    "paper-1.3b": dict(d_model=2048, n_layers=24, n_heads=16, d_ff=8192),
}


class ModelConfig(Section):
    family: Literal["llama", "gpt2", "mpt"] = Field(
        "llama", description="llama: RoPE, no positional parameters; gpt2: learned positions; "
        "mpt: ALiBi, no positional parameters (the paper's models: MPT blocks, GELU MLP)")
    size: Literal["tiny", "demo", "paper-125m", "paper-350m", "paper-1.3b"] = "demo"
    d_model: int | None = Field(None, gt=0, description="overrides the size preset")
    n_layers: int | None = Field(None, gt=0)
    n_heads: int | None = Field(None, gt=0)
    d_ff: int | None = Field(None, gt=0)
    max_seq_len: int = Field(256, gt=1, description="positions the model supports")
    tie_embeddings: bool = Field(True, description="output layer = token embeddings (paper)")

    def dims(self) -> dict[str, int]:
        dims = dict(SIZES[self.size])
        for key in dims:
            if getattr(self, key) is not None:
                dims[key] = getattr(self, key)
        if dims["d_model"] % dims["n_heads"]:
            raise ValueError(f"model.d_model {dims['d_model']} is not divisible by "
                             f"model.n_heads {dims['n_heads']}")
        if self.family == "mpt" and dims["d_ff"] % dims["d_model"]:
            raise ValueError(f"model.d_ff {dims['d_ff']}: the mpt family needs a multiple of "
                             f"model.d_model {dims['d_model']} (its MLP expansion ratio)")
        return dims


# ---------------------------------------------------------------------------------- train ----
def _known_variants(names: list[str], need_global_bank: bool = False) -> list[str]:
    """Every name must be in the variant registry (`dept_core.variants`)."""
    for name in names:
        if name not in variants.REGISTRY:
            raise ValueError(f"unknown variant '{name}' (known: {', '.join(variants.names())})")
        if need_global_bank and not variants.get(name).has_global_bank:
            raise ValueError(f"variant '{name}' has no global embedding to continue from")
    return names


class OuterConfig(Section):
    optimizer: Literal["avg", "nesterov"] = Field(
        "avg", description="avg: θ ← θ + lr·mean Δ (lr 1 = FedAvg, the paper); nesterov: "
        "DiLoCo's outer Nesterov momentum on the pseudo-gradient −mean Δ"
    )
    lr: float | None = Field(None, gt=0, description="server learning rate (default: 1.0 for "
                             "avg, 0.7 for nesterov as in DiLoCo)")
    momentum: float = Field(0.9, ge=0, lt=1, description="outer momentum (nesterov only)")
    weighting: Literal["uniform", "tokens"] = Field(
        "uniform", description="average uniformly or by each source's train tokens"
    )

    @property
    def server_lr(self) -> float:
        return self.lr if self.lr is not None else (1.0 if self.optimizer == "avg" else 0.7)


class TrainConfig(Section):
    variants: list[str] = Field(
        default_factory=lambda: list(variants.names()), min_length=1,
        description="variants to train and compare (default: every registered variant)"
    )
    seed: int = Field(0, ge=0, description="training seed of a run: initialisation, batches, "
                      "source schedule (the top-level seed is the data seed)")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1,
                             description="training seeds the pipeline repeats every variant's "
                             "pre-training and evaluation with (same data and tokenizers)")
    rounds: int = Field(8, gt=0, description="T, outer rounds")
    sources_per_round: int | None = Field(
        None, gt=0, description="|S_t|, sources trained per round (default: all)"
    )
    schedule: Literal["balanced", "random"] = Field(
        "balanced", description="balanced: every source takes part in the same number of rounds "
        "(a seeded schedule; needs rounds × sources_per_round divisible by the sources); "
        "random: S_t sampled uniformly without replacement each round (the paper)")
    local_steps: int = Field(20, gt=0, description="N_local inner steps per round")
    batch_size: int = Field(8, gt=0, description="sequences per inner step per source")
    micro_batch_size: int | None = Field(
        None, gt=0, description="at most this many sequences per forward/backward pass in "
        "every training loop (pre-training, CPT, plasticity, probe, downstream fine-tuning): "
        "gradient accumulation up to the step's batch; null: the whole batch in one pass")
    seq_len: int = Field(128, gt=1)
    lr: float = Field(3e-3, gt=0, description="peak inner AdamW learning rate")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine floor, share of lr")
    warmup_steps: int = Field(20, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    betas: list[float] = Field(default_factory=lambda: [0.9, 0.95], min_length=2, max_length=2)
    grad_clip: float = Field(1.0, gt=0)
    inner_state: Literal["reset", "keep"] = Field(
        "reset", description="inner AdamW state: reset every round or kept per source"
    )
    round_warmup_steps: int = Field(
        0, ge=0, description="reset: the rate ramps up linearly over a round's first steps, "
        "so a fresh AdamW does not start at the peak rate")
    outer: OuterConfig = OuterConfig()
    std_temperature: float = Field(
        0.0, ge=0, le=1, description="STD samples source k with p ∝ n_k^τ: 0 = uniform (the "
        "same tokens per source as DEPT's balanced schedule); the paper uses 0.3")
    act_every: int = Field(
        50, gt=0, description="ACT: re-initialise the token embeddings after every K-th "
        "step (K, 2K, ... before the last step; Chen et al. use K=1000 of 125 k steps)")
    eval_every: int = Field(1, gt=0, description="validate every this many rounds")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    checkpoint_keep: int = Field(2, gt=0, description="finished-round checkpoints kept")
    backend: Literal["inprocess", "torchrun", "flower"] = Field(
        "inprocess", description="inprocess: sources one after another in this process; "
        "torchrun: one rank per source group (dept_core.distributed; Gloo on CPU, NCCL on GPU); "
        "flower: one Flower SuperNode per source, cross-silo (dept_core.federation)"
    )
    flower_round_timeout: float = Field(
        3600.0, gt=0, description="flower: seconds a round's messages may take before a "
        "silent site stops the run (resumable)")
    nproc_per_node: int = Field(2, gt=0, description="torchrun: ranks started on this node")
    source_assignment: Literal["round_robin", "block"] = Field(
        "round_robin", description="torchrun: source i -> rank i mod W, or contiguous blocks"
    )
    replicas_per_source: int = Field(
        1, gt=0, description="torchrun: data-parallel ranks (GPUs) per source group; the "
        "world is (source groups × replicas), each replica takes batch_size / replicas "
        "sequences of every step (dept_core.replicas)")
    replica_strategy: Literal["ddp", "fsdp2"] = Field(
        "ddp", description="torchrun with replicas_per_source > 1: DDP (each replica holds the "
        "whole model) or FSDP2 (weights, gradients and AdamW state sharded over the replicas)")
    compile: bool = Field(False, description="torch.compile each transformer block")

    @model_validator(mode="after")
    def _replica_batches(self) -> "TrainConfig":
        r = self.replicas_per_source
        if self.batch_size % r:
            raise ValueError(f"train.batch_size: {self.batch_size} is not divisible by "
                             f"train.replicas_per_source {r} (each replica takes an equal "
                             f"share of every batch)")
        if r > 1 and self.backend != "torchrun":
            raise ValueError(f"train.replicas_per_source: {r} needs train.backend: torchrun "
                             f"(replicas are torchrun ranks)")
        if self.backend == "torchrun" and self.nproc_per_node % r:
            raise ValueError(f"train.replicas_per_source: {r} does not divide "
                             f"train.nproc_per_node {self.nproc_per_node} (a source's replicas "
                             f"share one node)")
        return self

    @field_validator("variants")
    @classmethod
    def _variants_known(cls, names: list[str]) -> list[str]:
        if len(set(names)) != len(names):
            raise ValueError(f"a variant is listed twice: {names}")
        return _known_variants(names)

    @field_validator("seeds")
    @classmethod
    def _seeds_distinct(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise ValueError(f"expected distinct seeds >= 0, got {seeds}")
        return seeds


# ------------------------------------------------------------------------------- evaluate ----
class DownstreamConfig(Section):
    """A labelled task (paper §5, downstream): fine-tuned as trained and after CPT, a linear
    probe on the frozen body, beside majority-class and bag-of-words rows
    (dept_core.downstream)."""

    path: str = Field("corpus/downstream/topic.jsonl.gz",
                      description="JSON lines {text, label, split[, lang, id, group]}, relative "
                      "to the project root (corpus/...: the embedded task)")
    languages: list[str] | None = Field(None, description="keep rows of these langs (all)")
    label_groups: dict[str, list[str]] = Field(
        default_factory=dict, description="merge labels: new label -> the task's labels it "
        "replaces (a task too fine for the bodies at this size)")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="share of the train rows' "
                                "groups (packages) held out to choose on")
    steps: list[int] = Field(default_factory=lambda: [100, 200], min_length=1,
                             description="fine-tuning step counts to choose from (checkpoints "
                             "of one run per rate); 0: no downstream")
    lrs: list[float] = Field(default_factory=lambda: [3e-4, 1e-3, 3e-3], min_length=1,
                             description="peak AdamW rates to choose from, body and head alike")
    batch_size: int = Field(16, gt=0)
    max_len: int = Field(128, gt=2, description="tokens per example (truncated)")
    probe_cs: list[float] = Field(default_factory=lambda: [0.1, 1.0, 10.0, 100.0, 1000.0],
                                  min_length=1,
                                  description="inverse L2 strengths of the frozen-body linear "
                                  "head, chosen on validation")

    @field_validator("steps", "lrs", "probe_cs", mode="before")
    @classmethod
    def _scalar_is_one_point(cls, value):
        return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) \
            else value

    @field_validator("label_groups")
    @classmethod
    def _groups(cls, groups: dict[str, list[str]]) -> dict[str, list[str]]:
        olds = [label for members in groups.values() for label in members]
        if len(set(olds)) != len(olds) or any(not m for m in groups.values()):
            raise ValueError(f"every label may be merged into one group only, and a group "
                             f"needs labels: {groups}")
        return groups

    @field_validator("steps")
    @classmethod
    def _steps(cls, steps: list[int]) -> list[int]:
        if min(steps) < 0 or len(set(steps)) != len(steps) or (0 in steps and len(steps) > 1):
            raise ValueError(f"expected distinct step counts > 0 (or [0]: skip), got {steps}")
        return sorted(steps)

    @field_validator("lrs", "probe_cs")
    @classmethod
    def _positive(cls, values: list[float]) -> list[float]:
        if min(values) <= 0 or len(set(values)) != len(values):
            raise ValueError(f"expected distinct values > 0, got {values}")
        return values

    @property
    def enabled(self) -> bool:
        return max(self.steps) > 0


class ProbeConfig(Section):
    """The frozen-body probe (dept_core.probe): only a fresh global embedding trains."""

    lrs: list[float] = Field(default_factory=lambda: [0.003, 0.01, 0.03], min_length=1,
                             description="peak AdamW rates, the same grid for every body; "
                             "each body's is chosen on validation")
    steps: int = Field(100, ge=0, description="AdamW steps per rate (0: no probe)")
    batch_size: int = Field(8, gt=0, description="sequences per step, from the mixture")

    @field_validator("lrs")
    @classmethod
    def _positive(cls, lrs: list[float]) -> list[float]:
        if min(lrs) <= 0 or len(set(lrs)) != len(lrs):
            raise ValueError(f"expected distinct rates > 0, got {lrs}")
        return lrs


class MinimalPairsConfig(Section):
    """Zero-shot minimal pairs (dept_core.minimal_pairs): real text against the same words
    reordered, scored by log-likelihood, from every source's test split."""

    items_per_source: int = Field(100, ge=0, description="items per source (0: skip)")
    context: int = Field(10, gt=0, description="units (words; 2-character chunks in CJK) "
                         "of real context before the reordered span")
    length: int = Field(6, ge=3, description="units in the span that is reordered")
    choices: int = Field(4, ge=2, description="the real span and choices - 1 reorderings")
    protocols: list[Literal["as_trained", "after_cpt", "probe"]] = Field(
        default_factory=lambda: ["as_trained", "probe"], min_length=1,
        description="which models score the items: as trained (own tokenizers), after CPT, "
        "the frozen body with the probe's embedding")


class EvaluateConfig(Section):
    cpt_fraction: float = Field(
        0.17, ge=0, le=1, description="continued pre-training steps, share of pre-training "
        "steps (the paper: 15-19 %); 0 skips it")
    cpt_min_steps: int = Field(
        0, ge=0, description="at least this many CPT steps (when CPT runs): long enough for a "
        "fresh embedding to be learned at small budgets")
    bootstrap: int = Field(2000, ge=100, description="bootstrap resamples for every interval")
    cpt_from_pretrained: list[str] = Field(
        default_factory=lambda: ["glob", "trim", "std"],
        description="variants also continued from their pre-trained global embeddings")
    cpt_lr: float | None = Field(None, gt=0, description="peak rate (default: train.lr)")
    plasticity_steps: int = Field(60, ge=0, description="K adaptation steps (0: skip)")
    plasticity_eval_every: int = Field(10, gt=0, description="bits/byte every this many steps")
    plasticity_sources: list[str] | None = Field(
        None, description="unseen sources to adapt to (default: the heldout sources)")
    reference: bool = Field(True, description="also evaluate a randomly initialised body")
    downstream: DownstreamConfig = DownstreamConfig()
    probe: ProbeConfig = ProbeConfig()
    minimal_pairs: MinimalPairsConfig = MinimalPairsConfig()
    cpt_eval_points: int = Field(4, ge=0, description="validation bits/byte at this many "
                                 "evenly spaced CPT steps (the last included): the curve "
                                 "shows whether the gap between bodies closes or holds")

    @field_validator("cpt_from_pretrained")
    @classmethod
    def _cpt_variants(cls, names: list[str]) -> list[str]:
        return _known_variants(names, need_global_bank=True)


# --------------------------------------------------------------------------------- config ----
class Config(Section):
    seed: int = Field(0, ge=0)
    data: DataConfig
    prepare: PrepareConfig = PrepareConfig()
    tokenizers: TokenizersConfig = TokenizersConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()

    def with_train_seed(self, seed: int) -> "Config":
        """The configuration of one run of training seed `seed` (one of train.seeds)."""
        return self.model_copy(update={"train": self.train.model_copy(update={"seed": seed})})

    @model_validator(mode="after")
    def _cross_checks(self) -> "Config":
        names = {s.name for s in self.data.sources}
        n_train = len(self.data.train_sources)
        if self.train.sources_per_round is None:
            object.__setattr__(self.train, "sources_per_round", n_train)
        if self.train.sources_per_round > n_train:
            raise ValueError(f"train.sources_per_round: {self.train.sources_per_round} is more "
                             f"than the {n_train} training sources")
        t, n = self.train, n_train
        if t.schedule == "balanced" and (t.rounds * t.sources_per_round) % n:
            ok = [r for r in range(max(1, t.rounds - n), t.rounds + n + 1)
                  if (r * t.sources_per_round) % n == 0]
            raise ValueError(
                f"train.schedule: balanced needs train.rounds × train.sources_per_round "
                f"({t.rounds} × {t.sources_per_round}) divisible by the {n} training sources, "
                f"so that every source trains in the same number of rounds; e.g. train.rounds "
                f"in {ok[:4]}, or train.schedule: random")
        if t.backend == "torchrun" and t.nproc_per_node // t.replicas_per_source > n:
            raise ValueError(f"train.nproc_per_node: {t.nproc_per_node} ranks / "
                             f"{t.replicas_per_source} replicas per source = "
                             f"{t.nproc_per_node // t.replicas_per_source} source groups for "
                             f"{n} training sources; use at most one group per source")
        if self.train.seq_len > self.model.max_seq_len:
            raise ValueError(f"train.seq_len: {self.train.seq_len} exceeds "
                             f"model.max_seq_len {self.model.max_seq_len}")
        self.model.dims()
        for key in self.evaluate.plasticity_sources or []:
            if key not in names:
                raise ValueError(f"evaluate.plasticity_sources: unknown source '{key}'")
        for key in self.tokenizers.per_source_vocab_overrides:
            if key not in names:
                raise ValueError(
                    f"tokenizers.per_source_vocab_overrides: unknown source '{key}'"
                )
        return self

