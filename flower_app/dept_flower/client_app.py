"""The ClientApp: one data source's site (`dept_core.silo.SiloClient`).

Its SuperNode is started with `--node-config "source=<name>"`; Flower starts a process per
message, so each handler builds the site afresh from the run config and the node-local
storage (`state-root/<source>/`: batch position, inner AdamW state, SPEC's embeddings).
Messages: query "hello" (sizes, TRIM's V_k), train (θ [+ bank] -> Δθ [+ bank], stats),
evaluate (θ [+ bank] -> validation), query "export" (SPEC: the site's own model).
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from dept_core import layout
from dept_core.accel import pick_device
from dept_core.config_io import load_config
from dept_core.silo import SiloClient
from dept_flower.wire import arrays, config, tensors

app = ClientApp()


def _site(context: Context) -> SiloClient:
    rc = context.run_config
    cfg = load_config(Path(str(rc["params"])))
    source = str(context.node_config["source"])
    root = Path(str(rc["root"]))
    return SiloClient(cfg, str(rc["variant"]), source, layout.prepared(root),
                      layout.tokenizers(root), Path(str(rc["state-root"])) / source,
                      pick_device(cfg.train.device))


def _round(msg: Message) -> int:
    return int(msg.content["config"]["round"])


@app.query()
def query(msg: Message, context: Context) -> Message:
    site = _site(context)
    ask = str(msg.content["config"]["ask"])
    if ask == "hello":
        info = site.hello()
        ids = info.pop("global_ids")
        content = RecordDict({"info": config(info)})
        if ids is not None:
            content["rows"] = arrays({"global_ids": ids})
    elif ask == "export":
        out = Path(str(context.run_config["state-root"])) / site.source / "model"
        shapes = site.export(_round(msg), tensors(msg.content["body"]), out)
        content = RecordDict({"shapes": config({c: s for c, s in shapes.items()}),
                              "where": config({"dir": str(out)})})
    else:
        raise ValueError(f"unknown query {ask!r}")
    return Message(content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    reply = _site(context).train(_round(msg), tensors(msg.content["body"]),
                                 tensors(msg.content.get("bank")))
    content = RecordDict({"delta": arrays(reply["delta"]), "stats": config(reply["stats"])})
    if reply["bank"]:
        content["bank"] = arrays(reply["bank"])
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    val = _site(context).evaluate(_round(msg), tensors(msg.content["body"]),
                                  tensors(msg.content.get("bank")))
    return Message(RecordDict({"val": config(val if val is not None else {"none": True})}),
                   reply_to=msg)
