"""The variant registry: every variant the pipeline knows, declared in one place.

A variant is what `train.variants` lists and what `dept train --variant` accepts. It declares

* its **embedding policy** (`dept_core.policies`: which bank a sampled source starts from,
  what it sends back, how the server folds it in) — or none, for a centralised run;
* its **tokenizer layout**: `global` (one tokenizer over the mixture, vocabulary V),
  `subvocab` (the global tokenizer restricted to V_k ⊆ V, local ids), or `own` (a
  SentencePiece model trained on the source alone, SPEC-OPT);
* whether it is **centralised** (one model trained on the mixture, gradients synchronised
  every step: the STD baseline) rather than DEPT's rounds.

Every other module asks this registry (`get(name)`); none tests a variant's name. Adding a
variant that reuses an existing policy is one `register(Variant(...))` call (or one entry in
`REGISTRY` below): the config, the CLI, the DVC stages (`foreach: ${train.variants}`), the
runs and the report follow. This module is deliberately light (no torch): the config and the
CLI import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Layout = Literal["global", "subvocab", "own"]


@dataclass(frozen=True)
class Variant:
    name: str
    summary: str
    tokenizer: Layout
    #: the embedding policy's name in `dept_core.policies.POLICIES`; None = centralised run
    policy: str | None = None
    #: the policy keeps no bank at the server (SPEC, SPEC-OPT): no global embedding exists
    local_banks_only: bool = False
    #: a centralised run whose token embeddings are re-initialised every `train.act_every`
    #: steps (active forgetting, ACT)
    forgets_embeddings: bool = False

    @property
    def centralised(self) -> bool:
        return self.policy is None

    @property
    def has_global_bank(self) -> bool:
        """A global embedding over V exists at the end (and can be continued from)."""
        return not self.local_banks_only


REGISTRY: dict[str, Variant] = {}


def register(variant: Variant) -> Variant:
    """Add a variant (its name must be new and usable as a file and DVC stage name)."""
    import re

    if variant.name in REGISTRY or variant.name == REFERENCE:
        raise ValueError(f"variant '{variant.name}' is already registered")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", variant.name):
        raise ValueError(f"variant name '{variant.name}': use lower-case letters, digits, _")
    if variant.centralised and variant.local_banks_only:
        raise ValueError(f"variant '{variant.name}': a centralised run has a global bank")
    if variant.forgets_embeddings and not variant.centralised:
        raise ValueError(f"variant '{variant.name}': active forgetting is for centralised runs")
    REGISTRY[variant.name] = variant
    return variant


def unregister(name: str) -> None:
    """Remove a variant (tests register throwaway variants)."""
    REGISTRY.pop(name, None)


def get(name: str) -> Variant:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown variant '{name}' (known: {', '.join(REGISTRY)})") from None


def names() -> tuple[str, ...]:
    """Every registered variant, in registration order (the report's order after STD)."""
    return tuple(REGISTRY)


#: the untrained body, evaluated like a variant (the floor of every comparison); not trained
REFERENCE = "random"
#: the baseline every "% vs STD" figure is relative to
BASELINE = "std"


def report_order(present) -> list[str]:
    """Report rows: centralised runs (the baseline first), DEPT variants in registration
    order, unregistered names, the untrained reference last."""
    known = sorted((v for v in REGISTRY.values() if v.name in present),
                   key=lambda v: (v.name != BASELINE, not v.centralised))
    rest = sorted(k for k in present if k not in REGISTRY and k != REFERENCE)
    return [v.name for v in known] + rest + ([REFERENCE] if REFERENCE in present else [])


# --- the paper's variants (§3, Algorithm 1) and its baseline (§4) ----------------------------
register(Variant("glob", "GLOB: one global embedding over V, averaged with the body",
                 tokenizer="global", policy="glob"))
register(Variant("trim", "TRIM: a source sends and receives only the rows of its V_k",
                 tokenizer="subvocab", policy="trim"))
register(Variant("spec", "SPEC: per-source embeddings over V_k that never leave the source",
                 tokenizer="subvocab", policy="spec", local_banks_only=True))
register(Variant("spec_opt", "SPEC-OPT: SPEC with a tokenizer of the source's own",
                 tokenizer="own", policy="spec", local_banks_only=True))
register(Variant("std", "STD: centralised training on the mixture (the baseline)",
                 tokenizer="global"))
# Beyond the paper's own variants: the baseline it compares plasticity against (paper §5,
# "active forgetting", Chen et al., NeurIPS 2023): STD whose token embeddings are
# re-initialised every K = `train.act_every` steps.
register(Variant("act", "ACT: STD with its token embeddings re-initialised every K steps "
                 "(active forgetting)", tokenizer="global", forgets_embeddings=True))
