"""DEPT's embedding policies behind one interface (paper §3, Algorithm 1).

A policy decides which bank a sampled source starts from (`download`), what it sends back
(`upload`) and how the server folds it in (`aggregate`). The body is handled identically for
every variant by the round loop. Every tensor that crosses the boundary is put in the ledger.

| policy   | bank at the server          | a source receives / returns           |
|----------|-----------------------------|---------------------------------------|
| glob     | tok over V (+pos, +head)    | everything                            |
| trim     | tok over V (+pos, +head)    | rows of V_k (+pos), rows averaged     |
|          |                             | only over the sources holding them    |
| spec     | none                        | nothing: a bank per source over V_k,  |
|          |                             | random init at first sampling         |

Variants name their policy in the registry (`dept_core.variants`): SPEC-OPT uses `spec` with
tokenizers of its own. Each policy also states its row of the paper's Table 1
(`table1_params`), the communication volume the ledger is checked against.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dept_core.batches import derived_seed
from dept_core.comm import CommLedger
from dept_core.config import ModelConfig
from dept_core.model import ROW_COMPONENTS, init_bank, nbytes
from dept_core.outer import LOCAL, Exchange, OuterOptimizer


class Policy:
    #: the server holds a bank over V (GLOB, TRIM); SPEC keeps banks at the sources only
    server_bank = True
    #: a source's rows are its sub-vocabulary's global ids (the `subvocab` tokenizer layout)
    needs_subvocab = False

    #: the paper's Table 1 row: parameters one sampled source receives (and returns) per round,
    #: given M = `full` (body + |V|·d + L·d), |V| = `vocab`, |V_k| = `vk`, d and L.
    @staticmethod
    def table1_params(full: int, vocab: int, vk: int, d: int, pos_rows: int) -> int:
        return full

    def __init__(self, mcfg: ModelConfig, global_bank: dict[str, Tensor] | None,
                 rows: dict[str, Tensor], vocab: dict[str, int], seed: int,
                 ledger: CommLedger):
        self.mcfg, self.rows, self.vocab, self.seed = mcfg, rows, vocab, seed
        self.ledger = ledger
        self.bank = global_bank  # the server's bank (None for SPEC)
        self.pending: dict[str, dict[str, Tensor]] = {}
        self.sent: dict[str, dict[str, Tensor]] = {}

    # --- the protocol -----------------------------------------------------------------------
    def download(self, rnd: int, source: str) -> dict[str, Tensor]:
        bank = self._slice(source)
        self.sent[source] = bank
        for comp, t in bank.items():
            self.ledger.add(rnd, source, "down", comp, nbytes({comp: t}))
        return bank

    def upload(self, rnd: int, source: str, new_bank: dict[str, Tensor]) -> None:
        delta = {c: new_bank[c] - self.sent[source][c] for c in new_bank}
        for comp, t in delta.items():
            self.ledger.add(rnd, source, "up", comp, nbytes({comp: t}))
        self.pending[source] = delta

    def aggregate(self, weights: dict[str, float], outer: OuterOptimizer,
                  group: Exchange = LOCAL) -> None:
        """Fold this process's pending uploads in. `weights` holds every source sampled this
        round (in-process: exactly the pending ones; distributed: on every rank)."""
        raise NotImplementedError

    def eval_bank(self, source: str) -> dict[str, Tensor] | None:
        return self._slice(source)

    # --- checkpointing ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        return {f"server/{c}": t for c, t in (self.bank or {}).items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.bank = {k.split("/", 1)[1]: v.clone() for k, v in state.items()
                     if k.startswith("server/")}

    def _slice(self, source: str) -> dict[str, Tensor]:
        raise NotImplementedError


class Glob(Policy):
    """GLOB: one global bank, averaged with the body."""

    def _slice(self, source):
        return {c: t.clone() for c, t in self.bank.items()}

    def aggregate(self, weights, outer, group=LOCAL):
        names, total = list(self.pending), sum(weights.values())
        for comp, param in self.bank.items():
            mean = group.mean(param, [self.pending[s][comp] for s in names],
                              [weights[s] for s in names], total)
            outer.step(f"bank/{comp}", param, mean)
        self.pending.clear()


class Trim(Policy):
    """TRIM: a source receives and returns only the rows of its sub-vocabulary V_k."""

    needs_subvocab = True

    @staticmethod
    def table1_params(full, vocab, vk, d, pos_rows):
        return full - (vocab - vk) * d

    def _slice(self, source):
        return {c: (t[self.rows[source]] if c in ROW_COMPONENTS else t).clone()
                for c, t in self.bank.items()}

    def aggregate(self, weights, outer, group=LOCAL):
        names, total = list(self.pending), sum(weights.values())
        w = [weights[s] for s in names]
        for comp, param in self.bank.items():
            deltas = [self.pending[s][comp] for s in names]
            if comp in ROW_COMPONENTS:
                mean, held = group.row_mean(param, deltas, [self.rows[s] for s in names], w)
                outer.step(f"bank/{comp}", param, mean, rows=held)
            else:
                outer.step(f"bank/{comp}", param, group.mean(param, deltas, w, total))
        self.pending.clear()


class Spec(Policy):
    """SPEC / SPEC-OPT: each source keeps its own bank; nothing of it is ever sent.

    A source's bank is created (randomly, from a seed derived from the run seed and the
    source name, so the result does not depend on when it is first sampled) the first time
    the source is sampled, as Algorithm 1 does.
    """

    server_bank = False

    @staticmethod
    def table1_params(full, vocab, vk, d, pos_rows):
        return full - (vocab + pos_rows) * d

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.local: dict[str, dict[str, Tensor]] = {}

    def download(self, rnd, source):
        if source not in self.local:
            gen = torch.Generator().manual_seed(derived_seed(self.seed, "spec-bank", source))
            self.local[source] = init_bank(self.mcfg, self.vocab[source], gen)
        return {c: t.clone() for c, t in self.local[source].items()}

    def upload(self, rnd, source, new_bank):
        self.pending[source] = {c: t.clone() for c, t in new_bank.items()}  # stays local

    def aggregate(self, weights, outer, group=LOCAL):
        self.local.update(self.pending)  # committed only once the whole round succeeded
        self.pending.clear()

    def eval_bank(self, source):
        bank = self.local.get(source)
        return None if bank is None else {c: t.clone() for c, t in bank.items()}

    def state_dict(self):
        return {f"local/{s}/{c}": t for s, bank in self.local.items() for c, t in bank.items()}

    def load_state_dict(self, state):
        self.local = {}
        for key, t in state.items():
            if key.startswith("local/"):
                _, source, comp = key.split("/")
                self.local.setdefault(source, {})[comp] = t.clone()


POLICIES: dict[str, type[Policy]] = {"glob": Glob, "trim": Trim, "spec": Spec}


def table1_bytes_per_round(policy: str, body: int, vocab: int, sub_vocabs: list[int],
                           d_model: int, pos_rows: int, elem: int = 4) -> int:
    """The paper's Table 1 per-round volume, up plus down, summed over the round's sources.

    M − (|V| − |V_k|)·d for TRIM and M − (|V| + L)·d for SPEC per source and direction, with
    M = body + |V|·d + L·d (L = rows of the positional table; 0 for RoPE/ALiBi models).
    """
    full = body + (vocab + pos_rows) * d_model
    per_source = POLICIES[policy].table1_params
    return sum(2 * per_source(full, vocab, vk, d_model, pos_rows) * elem for vk in sub_vocabs)
