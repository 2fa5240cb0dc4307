"""The pretrain task: one variant's rounds (resumable), its metrics and exported models."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections import deque
from pathlib import Path

from prefect import get_run_logger, task
from prefect.runtime import flow_run
from tqdm.auto import tqdm

from dept_core import layout, variants
from dept_core.config import Config
from dept_core.errors import DeptError
from dept_core.run import round_line, run_key, train_variant, write_outputs
from dept_core.trainer import MetricsSink
from dept_core import interrupt
from tasks.common import NO_CACHE
from tasks.runs import variant_run
from tasks.tracking import MlflowSink, log_artifact, pretraining_summary


@task(name="pretrain", task_run_name="pretrain-{variant}", **NO_CACHE)
def pretrain_task(cfg: Config, variant: str, root: Path, parent_run_id: str | None = None,
                  torchrun_args: list[str] | None = None) -> dict:
    """Train (or resume) `variant` as an MLflow run; write results/pretrain/<variant>/.

    With train.backend=torchrun the rounds run in a `torchrun` subprocess (one rank per
    source group); `torchrun_args` replace the default `--standalone` (multi-node rendezvous).
    """
    tags = {"prefect_flow_run_id": str(flow_run.get_id() or "")}
    with variant_run(root, cfg, variant, "pretrain", parent_run_id, tags) as (client, run_id, _):
        sink = MlflowSink(client, run_id)
        if cfg.train.backend == "torchrun" and not variants.get(variant).centralised:
            metrics = _pretrain_torchrun(cfg, variant, root, sink, torchrun_args)
        elif cfg.train.backend == "flower" and not variants.get(variant).centralised:
            metrics = _pretrain_flower(cfg, variant, root, sink)
        else:  # a centralised run (STD) always runs in-process
            metrics = _pretrain(cfg, variant, root, sink)
        log_artifact(client, run_id, layout.pretrain_metrics(root, variant, cfg.train.seed))
        log_artifact(client, run_id, layout.tokenizer_stats(root))
        log_artifact(client, run_id, layout.models_dir(root, variant, cfg.train.seed), "models")
        sink.log(pretraining_summary(metrics), step=cfg.train.rounds)
        client.set_tag(run_id, "dept.pretrained", "1")
    return metrics


def _pretrain(cfg: Config, variant: str, root: Path, sink: MetricsSink) -> dict:
    log = get_run_logger()
    prepared, tok_root = layout.prepared(root), layout.tokenizers(root)
    ckpt_dir = layout.checkpoint_dir(root, variant, run_key(cfg, variant, prepared, tok_root))
    if (ckpt_dir / "latest.json").is_file():
        log.info("resuming %s from %s", variant, ckpt_dir)
    # A terminal progress bar over the rounds (only on a terminal; logs carry the same).
    bar = tqdm(total=cfg.train.rounds, desc=f"pretrain {variant}", unit="round",
               disable=not sys.stderr.isatty(), leave=False)

    def on_round(record: dict) -> None:
        log.info("%s %s", variant, round_line(record, cfg.train.rounds,
                                              cfg.data.train_sources))
        bar.n = record["round"]
        bar.set_postfix(tok_s=f"{record['tokens_per_s']:.0f}")

    try:
        result, _ = train_variant(cfg, variant, prepared, tok_root, ckpt_dir, sink,
                                  on_round=on_round)
    finally:
        bar.close()
    write_outputs(cfg, result, tok_root, layout.pretrain_dir(root, variant, cfg.train.seed))
    log.info("%s: mean val bits/byte %.4f, %.2f MB communicated", variant,
             result.metrics["final"]["val_bpb_mean"] or float("nan"),
             (result.metrics["comm"]["bytes_down_total"]
              + result.metrics["comm"]["bytes_up_total"]) / 1e6)
    return result.metrics


def _pretrain_torchrun(cfg: Config, variant: str, root: Path, sink: MetricsSink,
                       torchrun_args: list[str] | None = None) -> dict:
    """The same stage through torchrun (dept_core.distributed): the ranks write
    results/pretrain/<variant>/ (metrics.json, models/) and resume from their checkpoints;
    their per-round metrics stream back here into `sink` while the run goes on."""
    from dept_core.distributed import torchrun_command

    log = get_run_logger()
    with tempfile.TemporaryDirectory(prefix="dept-torchrun-") as tmp:
        params = Path(tmp) / "params.json"  # the validated config, exactly (JSON is YAML)
        params.write_text(cfg.model_dump_json(), encoding="utf-8")
        cmd = torchrun_command(params, variant, root, cfg.train.nproc_per_node, torchrun_args)
        log.info("%s: launching %s", variant, " ".join(cmd))
        tail: deque[str] = deque(maxlen=30)
        user: list[str] = []  # the ranks' one-line errors (kept apart: 8 ranks' tracebacks
        #                       would push them out of the tail)
        with subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, bufsize=1) as proc:
            for line in proc.stdout:
                line = line.rstrip("\n")
                if line.startswith("DEPT_METRICS "):
                    msg = json.loads(line.removeprefix("DEPT_METRICS "))
                    sink.log(msg["metrics"], step=msg["step"])
                    continue
                tail.append(line)
                if line.startswith("dept: error: "):
                    user.append(line)
                if line.startswith("round ") or "error" in line.lower():
                    log.info("%s %s", variant, line)
        if proc.returncode:
            interrupt.check()  # the terminal's Ctrl-C stopped the ranks too: say so
            if user:
                raise DeptError(user[-1].removeprefix("dept: error: "))
            raise RuntimeError(f"torchrun exited with status {proc.returncode}:\n"
                               + "\n".join(tail))
    metrics = json.loads(layout.pretrain_metrics(root, variant, cfg.train.seed).read_text())
    log.info("%s: mean val bits/byte %.4f on %d ranks", variant,
             metrics["final"]["val_bpb_mean"] or float("nan"), metrics["world_size"])
    return metrics


def _pretrain_flower(cfg: Config, variant: str, root: Path, sink: MetricsSink) -> dict:
    """The same stage across silos: a local Flower deployment (a SuperLink, one SuperNode
    per training source, from the Flower environment) runs DEPT's Flower app; the server
    checkpoints every round and each site keeps its private state under the run's checkpoint
    directory, so the same command resumes. The bytes Flower's SuperLink counted are added
    to metrics.json beside the app's own per-message figures."""
    from dept_core.atomic import write_json
    from dept_core.federation import LocalDeployment, failure_line

    log = get_run_logger()
    interrupt.where(f"pretrain {variant}", f"round 1/{cfg.train.rounds}")
    prepared, tok_root = layout.prepared(root), layout.tokenizers(root)
    ckpt = layout.checkpoint_dir(root, variant, run_key(cfg, variant, prepared, tok_root))
    out = layout.pretrain_dir(root, variant, cfg.train.seed)
    if (ckpt / "flower-server" / "latest.json").is_file():
        log.info("resuming %s from %s", variant, ckpt)

    def on_line(line: str) -> None:
        if line.startswith("DEPT_METRICS "):
            msg = json.loads(line.removeprefix("DEPT_METRICS "))
            sink.log(msg["metrics"], step=msg["step"])
        elif line.startswith("round "):
            log.info("%s %s", variant, line)
            done = int(line.split()[1].split("/")[0])  # "round 1/2 | ..."
            interrupt.detail(f"round {min(done + 1, cfg.train.rounds)}/{cfg.train.rounds}")

    with tempfile.TemporaryDirectory(prefix="dept-flower-") as tmp:
        params = Path(tmp) / "params.json"
        params.write_text(cfg.model_dump_json(), encoding="utf-8")
        with LocalDeployment(cfg.data.train_sources, Path(tmp) / "flwr",
                             ckpt / "flower-logs") as dep:
            log.info("%s: Flower SuperLink on 127.0.0.1:%d, %d SuperNodes (--insecure: "
                     "local only)", variant, dep.port, len(cfg.data.train_sources))
            record = dep.run({"params": str(params), "variant": variant, "root": str(root),
                              "out": str(out), "ckpt": str(ckpt / "flower-server"),
                              "state-root": str(ckpt / "flower-sites"),
                              "round-timeout": float(cfg.train.flower_round_timeout)},
                             on_line)
    interrupt.check()
    failed = failure_line(record)
    if failed is not None:
        raise DeptError(failed)
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["comm"]["flower"]["superlink_network_traffic"] = record.get("network-traffic")
    write_json(out / "metrics.json", metrics)
    return metrics
