"""DEPT split into a server and per-source sites (dept_core.silo), with a transport that calls
the sites directly: the same run as in-process, bit for bit, for every DEPT variant — the
Flower backend (tests/test_flower.py) then only has to carry the messages."""

from __future__ import annotations

import json

import pytest
import torch

from dept_core.config_io import validate
from dept_core.layout import PREPARED, TOKENIZERS
from dept_core.run import global_vocab_size, train_loop, train_variant
from dept_core.silo import SiloClient, SiloServer
from dept_core.trainer import MemorySink


class Direct:
    """Every message straight to a fresh SiloClient (as Flower builds one per message)."""

    def __init__(self, make):
        self.make, self.sent = make, []

    def train(self, rnd, payloads):
        self.sent.append(sorted(k for p in payloads.values() for k in p["bank"]))
        return {k: self.make(k).train(rnd, p["body"], p["bank"]) for k, p in payloads.items()}

    def evaluate(self, rnd, payloads):
        return {k: self.make(k).evaluate(rnd, p["body"], p["bank"]) for k, p in payloads.items()}


def _strip(history):
    return [{k: v for k, v in r.items() if k not in ("seconds", "tokens_per_s")}
            for r in history]


@pytest.mark.parametrize("variant,extra", [("glob", {}), ("trim", {"inner_state": "keep"}),
                                           ("spec", {"sources_per_round": 2}),
                                           ("spec_opt", {})])
def test_server_and_sites_are_the_inprocess_run(tokenized_root, tiny_raw, tmp_path, variant,
                                                extra):
    raw = json.loads(json.dumps(tiny_raw))
    raw["train"].update(rounds=3, local_steps=3, **extra)
    cfg = validate(raw)
    prepared, tok_root = tokenized_root / PREPARED, tokenized_root / TOKENIZERS
    cpu = torch.device("cpu")

    def site(k):
        return SiloClient(cfg, variant, k, prepared, tok_root, tmp_path / k, cpu)

    hello = {k: site(k).hello() for k in cfg.data.train_sources}
    transport = Direct(site)
    server = SiloServer(cfg, variant, hello, global_vocab_size(tok_root), cpu, transport)
    train_loop(server, cfg.train.rounds, tmp_path / "server", 2, MemorySink())
    ref, _ = train_variant(cfg, variant, prepared, tok_root, None)
    assert all(torch.equal(server.body[k], ref.body[k]) for k in ref.body)
    assert _strip(server.history) == _strip(ref.metrics["history"])
    assert [r["comm"] for r in server.history] == [r["comm"] for r in ref.metrics["history"]]
    if variant.startswith("spec"):  # nothing of a bank went down; each site holds its own
        assert transport.sent == [[]] * cfg.train.rounds
        for k, bank in ref.banks.items():
            mine = site(k)._bank(site(k)._state(cfg.train.rounds))
            assert all(torch.equal(mine[c], bank[c]) for c in bank)
    else:
        assert all(torch.equal(server.policy.bank[c], ref.global_bank[c])
                   for c in ref.global_bank)
