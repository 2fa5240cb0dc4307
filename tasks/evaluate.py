"""The evaluate task: the paper's evaluation of one variant (or of the untrained body)."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import get_run_logger, task

from dept_core import diskspace, layout
from dept_core.accel import pick_device
from dept_core.atomic import write_json
from dept_core.config import Config
from dept_core.evaluate import run_protocol
from dept_core.metrics import area_under_curve, join_timings
from dept_core.variants import REFERENCE
from tasks.common import NO_CACHE
from tasks.runs import variant_run
from tasks.tracking import MlflowSink, log_artifact, log_pretraining


def evaluation_metrics(result: dict) -> dict[str, float]:
    """The evaluation as flat MLflow metric names (curves are logged with their steps)."""
    out: dict[str, float] = {}
    sections = {"test": result.get("as_trained"), "probe": result.get("probe"),
                **{f"cpt_{k}": v for k, v in result.get("continued", {}).items()}}
    for prefix, sec in sections.items():
        if not sec:
            continue
        for dist, short in (("in_distribution", "id"), ("out_of_distribution", "ood")):
            for src, m in sec[dist].items():
                out[f"{prefix}_bpb/{src}"] = m["bpb"]
                out[f"{prefix}_ppl/{src}"] = m["ppl"]
            if sec[f"{dist}_bpb_mean"] is not None:
                out[f"{prefix}_bpb_{short}_mean"] = sec[f"{dist}_bpb_mean"]
    if result.get("probe"):
        out["probe_lr"] = result["probe"]["lr"]
    curves = result.get("plasticity", {}).get("curves", {})
    if curves:  # mean bits/byte over each held-out source's adaptation curve, then over sources
        aucs = [area_under_curve([p["step"] for p in c], [p["bpb"] for p in c])
                for c in curves.values()]
        out["plasticity_bpb_auc_mean"] = sum(aucs) / len(aucs)
    ds = result.get("downstream") or {}
    for proto in ("as_trained", "after_cpt", "frozen_probe"):
        if ds.get(proto) and ds[proto]["accuracy"] is not None:
            out[f"downstream/{proto}/accuracy"] = ds[proto]["accuracy"]
            out[f"downstream/{proto}/macro_f1"] = ds[proto]["macro_f1"]
    # the headline: after CPT (the paper's like-for-like row), else as trained
    head = ds.get("after_cpt") or ds.get("as_trained")
    if head and head["accuracy"] is not None:
        out["downstream/accuracy"], out["downstream/macro_f1"] = head["accuracy"], \
            head["macro_f1"]
        for lang, acc in head["accuracy_per_language"].items():
            out[f"downstream/accuracy/{lang}"] = acc
    for proto, res in (result.get("zero_shot") or {}).items():
        if isinstance(res, dict) and res.get("accuracy") is not None:
            out[f"zero_shot/{proto}/accuracy"] = res["accuracy"]
    return out


@task(name="evaluate", task_run_name="evaluate-{variant}", **NO_CACHE)
def evaluate_task(cfg: Config, variant: str, root: Path,
                  parent_run_id: str | None = None) -> dict:
    """Evaluate `variant` into its run under the execution (the one its pre-training logged
    to; the untrained reference gets a run of its own); write
    results/evaluate/<variant>/metrics.json."""
    log = get_run_logger()
    with variant_run(root, cfg, variant, "evaluate", parent_run_id) as (client, run_id, fresh):
        sink = MlflowSink(client, run_id)
        pretrained = layout.pretrain_metrics(root, variant, cfg.train.seed)
        if fresh and variant != REFERENCE and pretrained.is_file():
            timings = pretrained.with_name("timings.json")
            log_pretraining(sink, join_timings(
                json.loads(pretrained.read_text()),
                json.loads(timings.read_text()) if timings.is_file() else None))
            client.set_tag(run_id, "dept.pretrained", "1")
        result = run_protocol(cfg, variant, root, pick_device(cfg.train.device), log.info)
        # wall times apart: metrics.json holds only what the same command reproduces exactly
        seconds = result.pop("seconds", {})
        diskspace.expect(2 * len(json.dumps(result)))  # metrics.json and its MLflow copy
        path = layout.evaluate_metrics(root, variant, cfg.train.seed)
        write_json(path, result)
        write_json(path.with_name("timings.json"), seconds)
        sink.log_steps([({**evaluation_metrics(result),
                          **{f"eval_seconds/{k}": v for k, v in seconds.items()}}, 0)] + [
            ({f"plasticity_bpb/{src}": point["bpb"]}, point["step"])
            for src, curve in result.get("plasticity", {}).get("curves", {}).items()
            for point in curve])
        log_artifact(client, run_id, str(path), "evaluation")
        client.set_tag(run_id, "dept.evaluated", "1")
    cpt = result.get("continued", {}).get("fresh", {})
    log.info("%s: test bits/byte as trained %s; after CPT (fresh embedding) in/out of "
             "distribution %s / %s; downstream accuracy %s", variant,
             _fmt(result.get("as_trained", {}).get("in_distribution_bpb_mean")),
             _fmt(cpt.get("in_distribution_bpb_mean")),
             _fmt(cpt.get("out_of_distribution_bpb_mean")),
             _fmt(evaluation_metrics(result).get("downstream/accuracy")))
    return result


def _fmt(x) -> str:
    return "—" if x is None else f"{x:.4f}"
