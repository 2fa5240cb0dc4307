"""The ServerApp: DEPT's rounds across the sites (`dept_core.silo.SiloServer`), its strategy
DEPT's own — `dept_core.policies` for what each source downloads and uploads and how the
server folds it in (GLOB, TRIM's masked row average, SPEC: the body only), `dept_core.outer`
for the outer step — with Flower carrying the messages (`FlowerTransport`) and counting the
bytes that cross its transport, per round and direction, beside the ledger's figures.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
from flwr.app import Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from dept_core import layout
from dept_core.atomic import atomic_dir, write_json
from dept_core.config_io import load_config
from dept_core.errors import DeptError
from dept_core.export import export_model
from dept_core.metrics import split_timings
from dept_core.run import finish, round_line, train_loop
from dept_core.silo import SiloServer
from dept_flower.wire import arrays, config, payload_bytes, tensors, wire_bytes

app = ServerApp()


class FlowerTransport:
    """SiloServer's transport over a Flower Grid: one message per sampled source and kind."""

    def __init__(self, grid: Grid, nodes: dict[str, int], timeout: float):
        self.grid, self.nodes, self.timeout = grid, nodes, timeout
        self.per_round: dict[int, dict] = {}

    def _send(self, kind: str, rnd: int, payloads: dict, mtype: str,
              extra: dict | None = None) -> dict[str, Message]:
        msgs = {}
        for k, p in payloads.items():
            content = RecordDict({"config": config({"round": rnd, **(extra or {})})})
            if "body" in p:
                content["body"] = arrays(p["body"])
            if p.get("bank"):
                content["bank"] = arrays(p["bank"])
            msgs[k] = Message(content=content, message_type=mtype,
                              dst_node_id=self.nodes[k], group_id=f"{kind}-{rnd}")
        meter = self.per_round.setdefault(rnd, {}).setdefault(
            kind, {"down_wire": 0, "down_payload": 0, "up_wire": 0, "up_payload": 0})
        for m in msgs.values():
            meter["down_wire"] += wire_bytes(m)
            meter["down_payload"] += payload_bytes(m)
        replies = list(self.grid.send_and_receive(list(msgs.values()), timeout=self.timeout))
        by_node = {r.metadata.src_node_id: r for r in replies}
        out = {}
        for k in msgs:
            r = by_node.get(self.nodes[k])
            if r is None:
                raise DeptError(f"flower: site '{k}' (node {self.nodes[k]}) did not answer the "
                                f"{kind} message of round {rnd} within {self.timeout:.0f} s "
                                f"(train.flower_round_timeout); the rounds before it are "
                                f"checkpointed: run the same command to resume")
            if r.has_error():
                reason = (r.error.reason or "").strip().splitlines() or ["?"]
                raise DeptError(f"flower: site '{k}' failed the {kind} message of round {rnd}: "
                                f"{reason[-1][:300]}")
            meter["up_wire"] += wire_bytes(r)
            meter["up_payload"] += payload_bytes(r)
            out[k] = r
        return out

    def train(self, rnd: int, payloads: dict) -> dict:
        replies = self._send("train", rnd, payloads, MessageType.TRAIN)
        return {k: {"delta": tensors(r.content["delta"]),
                    "bank": tensors(r.content.get("bank")),
                    "stats": {**dict(r.content["stats"])}} for k, r in replies.items()}

    def evaluate(self, rnd: int, payloads: dict) -> dict:
        replies = self._send("evaluate", rnd, payloads, MessageType.EVALUATE)
        out = {}
        for k, r in replies.items():
            val = dict(r.content["val"])
            out[k] = None if val.get("none") else val
        return out

    def query(self, ask: str, rnd: int, payloads: dict) -> dict[str, Message]:
        return self._send(ask, rnd, payloads, MessageType.QUERY, {"ask": ask})

    def report(self, ledger) -> dict:
        """What crossed Flower's transport against the ledger (payload = tensor bytes)."""
        rounds = []
        for rnd in sorted(self.per_round):
            row = {"round": rnd, **{k: v for k, v in self.per_round[rnd].items()}}
            if rnd in ledger.rounds():
                detail = ledger.round_detail(rnd)
                row["ledger"] = {"down": detail["down"], "up": detail["up"]}
            rounds.append(row)
        train = [r for r in rounds if "train" in r]
        kinds = sorted({k for r in rounds for k in r if k not in ("round", "ledger")})
        keys = ("down_wire", "down_payload", "up_wire", "up_payload")
        totals = {kind: {key: sum(r[kind][key] for r in rounds if kind in r) for key in keys}
                  for kind in kinds}
        wire = sum(t["down_wire"] + t["up_wire"] for t in totals.values())
        payload = sum(t["down_payload"] + t["up_payload"] for t in totals.values())
        return {
            "per_round": rounds,
            # the training messages' tensors are exactly what the ledger (Table 1) counts
            "train_payload_equals_ledger": all(
                r["train"]["down_payload"] == r["ledger"]["down"]
                and r["train"]["up_payload"] == r["ledger"]["up"] for r in train),
            "totals": totals,  # per message kind: train, evaluate (validation), export
            "wire_bytes": wire, "payload_bytes": payload,
            "framing_bytes": wire - payload,  # protobuf envelopes, object ids, configs, stats
        }


class EmitSink:
    """One `DEPT_METRICS <json>` line per round (the launcher logs them to MLflow)."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        print("DEPT_METRICS " + json.dumps({"step": step, "metrics": metrics}), flush=True)


def _wait_for_nodes(grid: Grid, n: int, timeout: float) -> list[int]:
    start = time.monotonic()
    while len(nodes := sorted(grid.get_node_ids())) < n:
        if time.monotonic() - start > timeout:
            raise DeptError(f"flower: {len(nodes)} of {n} sites connected after {timeout:.0f} s")
        time.sleep(0.5)
    return nodes


def _hello(grid: Grid, nodes: list[int], timeout: float) -> tuple[dict, dict]:
    """Ask every node which source it serves: ({source: info}, {source: node id})."""
    msgs = [Message(content=RecordDict({"config": config({"ask": "hello", "round": 0})}),
                    message_type=MessageType.QUERY, dst_node_id=n, group_id="hello")
            for n in nodes]
    infos, where = {}, {}
    for r in grid.send_and_receive(msgs, timeout=timeout):
        if r.has_error():  # e.g. a killed node the SuperLink still lists until its heartbeat
            # lapses; a source nobody serves is refused by SiloServer
            print(f"flower: node {r.metadata.src_node_id} did not answer hello: "
                  f"{(r.error.reason or '?').strip().splitlines()[-1][:300]}", flush=True)
            continue
        info = dict(r.content["info"])
        if "rows" in r.content:
            info["global_ids"] = tensors(r.content["rows"])["global_ids"]
        if info["name"] in where:
            raise DeptError(f"flower: two sites serve source '{info['name']}'")
        infos[info["name"]], where[info["name"]] = info, r.metadata.src_node_id
    return infos, where


def _sites(grid: Grid, names: list[str], timeout: float) -> tuple[dict, dict]:
    """Every training source's site. Asked again while one is missing: a restarted
    SuperNode can connect after the SuperLink's list still shows the dead one it replaces."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = _wait_for_nodes(grid, len(names), timeout)
        infos, where = _hello(grid, nodes, min(timeout, 30.0))
        missing = [k for k in names if k not in infos]
        if not missing:
            return infos, where
        if time.monotonic() > deadline:
            raise DeptError(f"flower: no site serves training source(s) {missing} after "
                            f"{timeout:.0f} s (a SuperNode per source, --node-config "
                            f"'source=\"<name>\"')")
        time.sleep(1.0)


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    cfg = load_config(Path(str(rc["params"])))
    variant, root, timeout = str(rc["variant"]), Path(str(rc["root"])), float(rc["round-timeout"])
    names = cfg.data.train_sources
    infos, where = _sites(grid, names, timeout)
    transport = FlowerTransport(grid, where, timeout)
    vocab = int(infos[names[0]]["global_vocab_size"])
    cpu = torch.device("cpu")  # the server only averages
    server = SiloServer(cfg, variant, infos, vocab, cpu, transport)
    ckpt = Path(str(rc["ckpt"]))
    server.restore(ckpt)
    train_loop(server, cfg.train.rounds, ckpt, cfg.train.checkpoint_keep, EmitSink(),
               lambda rec: print(round_line(rec, cfg.train.rounds, names), flush=True))
    exported: dict[str, Path] = {}
    if not server.policy.server_bank:  # SPEC: each site exports its own model
        for k, r in transport.query("export", server.done,
                                    {k: {"body": server.body} for k in names}).items():
            server.bank_shapes[k] = {c: list(s) for c, s in dict(r.content["shapes"]).items()}
            exported[k] = Path(str(r.content["where"]["dir"]))
    result = finish(cfg, variant, server.result(), vocab, cpu)
    result.metrics.update(backend="flower", sites=where)
    result.metrics["comm"]["flower"] = transport.report(server.ledger)
    out = Path(str(rc["out"]))
    with atomic_dir(out / "models") as tmp:
        for k, bank in result.banks.items():
            if k in exported:  # (on one machine the site's directory is readable here)
                if exported[k].is_dir():
                    shutil.copytree(exported[k], tmp / k)
            else:
                export_model(cfg.model, result.body, bank, result.sources[k].tokenizer_dir,
                             tmp / k)
        if result.global_bank is not None:
            export_model(cfg.model, result.body, result.global_bank,
                         layout.tokenizers(root) / "global", tmp / "global")
    metrics, timings = split_timings(result.metrics)
    write_json(out / "metrics.json", metrics)
    write_json(out / "timings.json", timings)
    print(f"DEPT_DONE {out / 'metrics.json'}", flush=True)
