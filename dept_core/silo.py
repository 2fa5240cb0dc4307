"""DEPT across silos: the server's half and a source's half of each round, with no transport.

The paper's authors ran DEPT on Flower, one client per data source; cross-silo, a source is a
site of its own that keeps its data, its tokenizer and — SPEC / SPEC-OPT — its embeddings,
and only what the variant's row of Table 1 names crosses the boundary. This module is that
split of `rounds.DeptRun`; the Flower app (flower_app/dept_flower) only carries its messages:

* `SiloServer` is a `DeptRun` whose sources are all remote: the body θ, the policy (GLOB's and
  TRIM's server bank: `policies.download` / `upload` / `aggregate`), the outer optimiser
  (`outer`), the schedule, the ledger and the history, checkpointed as `DeptRun` does. Its
  `transport` sends each sampled source θ (+ its bank slice) and gets back Δθ_k (+ the bank),
  then the round ends with `DeptRun`'s own aggregation, so the arithmetic is the in-process
  run's (tests/test_silo.py: bit for bit, with a transport that calls the clients directly).
* `SiloClient` is one source's site: its train split (the token store), its tokenizer, and in
  node-local storage (`state_dir`, one file per finished round) what stays private — the batch
  generator's position, the inner AdamW state (`train.inner_state: keep`) and SPEC's
  embeddings. A train message for round r starts from the state of round r − 1, so a round the
  server redoes after a crash starts where it started the first time.

The server never holds a SPEC bank: validation runs at the sources (an evaluate message
carries θ), and at the end each SPEC source exports its own model; the server learns only the
banks' shapes (for the metrics' sizes).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from dept_core import checkpoint as ck
from dept_core import variants
from dept_core.batches import BatchSampler, derived_seed
from dept_core.comm import CommLedger
from dept_core.config import Config
from dept_core.errors import DeptError
from dept_core.export import export_model
from dept_core.model import build_model, nbytes
from dept_core.outer import LOCAL
from dept_core.policies import POLICIES
from dept_core.rounds import DeptRun, RunOutcome, local_round
from dept_core.sourcedata import SourceInfo, load_sources
from dept_core.trainer import LocalStats, evaluate_set


class SiloServer(DeptRun):
    """The server side: every source is remote (`transport`: `train(rnd, payloads)`,
    `evaluate(rnd, payloads)`, each {source: payload} → {source: reply})."""

    def __init__(self, cfg: Config, variant: str, hello: dict[str, dict], global_vocab: int,
                 device: torch.device, transport=None):
        names = cfg.data.train_sources
        missing = [k for k in names if k not in hello]
        if missing:
            raise DeptError(f"cross-silo: no site serves training source(s) {missing}")
        sources = {k: SourceInfo(k, Path(hello[k]["tokenizer_dir"]), int(hello[k]["vocab_size"]),
                                 int(hello[k]["train_tokens"])) for k in names}
        rows = {k: hello[k].get("global_ids") for k in names}
        super().__init__(cfg, variants.get(variant), {}, global_vocab, device, LOCAL, sources,
                         None, rows)
        self.transport = transport
        self.bank_shapes: dict[str, dict[str, list[int]]] = {}

    def _holds(self, source: str) -> bool:
        return True

    def _train_sources(self, rnd: int, mine: list[str]) -> dict:
        payloads = {}
        for k in mine:  # what goes down: θ, and the bank slice where the server holds one
            bank = self.policy.download(rnd, k) if self.policy.server_bank else {}
            self.ledger.add(rnd, k, "down", "body", nbytes(self.body))
            payloads[k] = {"body": self.body, "bank": bank}
        replies = self.transport.train(rnd, payloads)
        out = {}
        for k in mine:  # (DeptRun._record puts the ledger back in per-source order)
            reply = replies[k]
            self.ledger.add(rnd, k, "up", "body", nbytes(reply["delta"]))
            if self.policy.server_bank:
                self.policy.upload(rnd, k, reply["bank"])
            out[k] = (reply["delta"], LocalStats(**reply["stats"]), {})
        return out

    def _validate(self) -> dict:
        payloads = {k: {"body": self.body,
                        "bank": self.policy.eval_bank(k) if self.policy.server_bank else {}}
                    for k in self.sources}
        return {k: v for k, v in self.transport.evaluate(self.done + 1, payloads).items()
                if v is not None}

    def result(self) -> RunOutcome:
        """The final body and banks: the server's slices (GLOB, TRIM), or — SPEC — empty
        tensors of the shapes the sources reported (`bank_shapes`), for the metrics' sizes."""
        banks = {}
        for k in self.sources:
            if self.policy.server_bank:
                banks[k] = self.policy.eval_bank(k)
            elif k in self.bank_shapes:
                banks[k] = {c: torch.empty(s, device="meta")
                            for c, s in self.bank_shapes[k].items()}
        return RunOutcome(self.body, banks, self.policy.bank, self.sources, self.history,
                          self.ledger)


class SiloClient:
    """One source's site (built per message: Flower starts a process for each)."""

    def __init__(self, cfg: Config, variant: str, source: str, prepared: Path, tok_root: Path,
                 state_dir: Path, device: torch.device | None = None):
        from dept_core.run import global_vocab_size

        self.cfg, self.variant, self.source = cfg, variants.get(variant), source
        self.device = device or torch.device("cpu")
        self.data = load_sources(self.variant.tokenizer, [source], prepared, tok_root,
                                 cfg.train.seq_len)[source]
        self.global_vocab = global_vocab_size(tok_root)
        self.state_dir = Path(state_dir)
        self.private = not POLICIES[self.variant.policy].server_bank  # SPEC, SPEC-OPT

    def hello(self) -> dict:
        """What the server must know of this source: sizes, and TRIM's V_k (global ids)."""
        info = asdict(self.data.info())
        info["tokenizer_dir"] = str(info["tokenizer_dir"])
        info["global_ids"] = self.data.global_ids
        info["global_vocab_size"] = self.global_vocab
        return info

    # --- node-local state, one file per finished round ----------------------------------------
    def _state(self, upto: int) -> tuple[int, dict[str, Tensor], dict] | None:
        """The latest saved state of a round <= `upto` (None: nothing yet)."""
        rounds = sorted(int(p.stem.split("-")[1]) for p in self.state_dir.glob("round-*.json"))
        rounds = [r for r in rounds if r <= upto]
        if not rounds:
            return None
        stem = self.state_dir / f"round-{rounds[-1]:06d}"
        return rounds[-1], load_file(str(stem.with_suffix(".safetensors"))), \
            json.loads(stem.with_suffix(".json").read_text())

    def _bank(self, state) -> dict[str, Tensor] | None:
        if state is None:
            return None
        bank = ck.unpack("bank", state[1])
        return bank or None

    def _model(self):
        return build_model(self.cfg.model, self.global_vocab, self.cfg.train.seed)

    # --- the messages ----------------------------------------------------------------------------
    def train(self, rnd: int, body: dict[str, Tensor], bank: dict[str, Tensor]) -> dict:
        t = self.cfg.train
        state = self._state(rnd - 1)
        sampler = BatchSampler(self.data.train, t.seq_len, t.batch_size,
                               derived_seed(t.seed, "batches", self.source))
        opt_state = None
        if state is not None:
            sampler.set_state(state[1]["rng/batches"])
            if t.inner_state == "keep" and state[2]["opt_groups"] is not None:
                opt_state = ck.optimizer_from_tensors(ck.unpack("opt", state[1]),
                                                      state[2]["opt_groups"])
        if self.private:  # SPEC: this source's own bank, created as policies.Spec does
            bank = self._bank(state)
            if bank is None:
                spec = POLICIES["spec"](self.cfg.model, None, {self.source: None},
                                        {self.source: self.data.vocab_size}, t.seed,
                                        CommLedger())
                bank = spec.download(rnd, self.source)
        delta, new_bank, stats, new_opt = local_round(
            self.cfg, self._model(), body, bank, sampler, opt_state, self.source, rnd,
            self.device)
        tensors = {"rng/batches": sampler.state()}
        groups = None
        if t.inner_state == "keep":
            flat, groups = ck.optimizer_to_tensors(new_opt)
            tensors.update(ck.pack("opt", flat))
        if self.private:
            tensors.update(ck.pack("bank", new_bank))
        ck.save(self.state_dir, rnd, tensors, {"opt_groups": groups},
                keep=t.checkpoint_keep + 1)
        return {"delta": delta, "bank": {} if self.private else new_bank,
                "stats": {"loss": stats.loss, "tokens": stats.tokens, "seconds": stats.seconds,
                          "step_losses": stats.step_losses}}

    def evaluate(self, rnd: int, body: dict[str, Tensor], bank: dict[str, Tensor]
                 ) -> dict | None:
        """Validation with θ after round `rnd` (SPEC: this source's bank of that round; a
        source never trained yet has none: None)."""
        if self.private:
            bank = self._bank(self._state(rnd))
            if bank is None:
                return None
        model = self._model()
        from dept_core.model import load_body, set_bank

        load_body(model, body)
        set_bank(model, bank)
        return evaluate_set(model, self.data.val, self.device)

    def export(self, rnd: int, body: dict[str, Tensor], out_dir: Path) -> dict:
        """SPEC: this source's model (θ + its own bank + its tokenizer) exported at the site;
        returns the bank's shapes."""
        bank = self._bank(self._state(rnd))
        if bank is None:
            return {}
        export_model(self.cfg.model, body, bank, self.data.tokenizer_dir, Path(out_dir))
        return {c: list(v.shape) for c, v in bank.items()}
