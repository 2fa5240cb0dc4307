"""dept_study: a grid of configurations × seeds through the pipeline, reported together.

    python -m flows.study --study configs/study-cpu.yaml      (= dept study --study ...)

Each cell (one point of grid × tuning grid, `dept_core.study`) is a `dept_pipeline` subflow
in a project directory of its own (studies/<name>/cells/<id>/: params.yaml, results/,
checkpoints/); cells whose data sections agree share prepared data and tokenizers
(studies/<name>/data/<key>/). A finished cell carries `done.json` and is never recomputed; a
killed study started again skips the finished cells and resumes the interrupted one from its
last finished round (the pipeline's checkpoints). MLflow: one parent run per study (reused
when the study continues), each cell's pipeline run a child of it, each variant's run (one
per seed: pre-training and, where chosen, evaluation) a child of its cell's. The report:
results/study/<name>/ (summary.md, summary.json, gap.csv, plots/*.png against the budget),
also on the study's MLflow run.
"""

from __future__ import annotations

import argparse
import json
import os
from contextlib import contextmanager
from pathlib import Path

from prefect import flow, get_run_logger

from dept_core import layout, report
from dept_core import study as st
from dept_core import study_report as sr
from dept_core.atomic import atomic_dir, write_json, write_text
from dept_core.variants import REFERENCE
from flows.common import add_no_wait_arg, run_stage
from flows.pipeline import dept_pipeline
from flows.prepare import prepare_flow
from flows.tokenizers import tokenizers_flow
from flows.lock import holds_project
from tasks.compare import read_results
from tasks.evaluate import evaluate_task
from tasks.runs import study_run
from tasks.tracking import check_tracking_uri, flatten, log_artifact, tracking_uri


def _write_params(directory: Path, cell: st.Cell, root: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "params.yaml"
    raw = st.absolutise(cell.cfg.model_dump(mode="json"), root)
    write_text(path, json.dumps(raw, indent=1) + "\n")  # JSON is YAML
    return path


def _shared_data(root: Path, name: str, cell: st.Cell) -> Path:
    """Prepare and tokenize once per data key (done.json marks a finished one)."""
    ddir = layout.study_data(root, name, cell.data_key)
    if not (ddir / "done.json").is_file():
        params = _write_params(ddir, cell, root)
        prepare_flow(str(params), [], str(ddir))
        tokenizers_flow(str(params), [], str(ddir))
        write_json(ddir / "done.json", {"data_key": cell.data_key})
    return ddir


def _link_data(cdir: Path, ddir: Path) -> None:
    for rel in (layout.PREPARED, layout.TOKENIZERS,
                layout.tokenizer_stats(Path("."))):
        dst = cdir / rel
        if dst.is_symlink() or dst.exists():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to((ddir / rel).resolve())


@contextmanager
def _project_store(root: Path):
    """One tracking store for the whole study: the project's (the cells are sub-directories
    and would otherwise each get an mlflow.db); a user's MLFLOW_TRACKING_URI is kept."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri(root)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before


@flow(name="dept_study")
@holds_project
def study_flow(study: str, root: str | None = None) -> dict:
    log = get_run_logger()
    root_path = Path(root) if root else Path.cwd()
    spec = st.load_study(root_path / study)
    cells = st.expand(spec, root_path)
    key = st.digest({"name": spec.name, "cells": [c.id for c in cells]})
    params = {"study.name": spec.name, "study.cells": str(len(cells)),
              "study.seeds": json.dumps(spec.seeds),
              **{f"study.grid.{k}": json.dumps(v) for k, v in spec.grid.items()},
              **{f"study.tune.{k}": json.dumps(v) for k, v in spec.tune.items()},
              **{f"base.{k}": v for k, v in flatten(cells[0].cfg.model_dump(mode="json")).items()
                 if not any(k == g or k.startswith(g + ".") for g in [*spec.grid, *spec.tune])}}
    with _project_store(root_path), \
            study_run(root_path, spec.name, key, params) as (client, study_id):
        for i, cell in enumerate(cells, 1):
            cdir = layout.study_cell(root_path, spec.name, cell.id)
            if (cdir / "done.json").is_file():
                log.info("cell %d/%d %s: finished earlier, skipped", i, len(cells), cell.label)
                continue
            log.info("cell %d/%d %s (%s)", i, len(cells), cell.label, cdir)
            ddir = _shared_data(root_path, spec.name, cell)
            params_path = _write_params(cdir, cell, root_path)
            _link_data(cdir, ddir)
            dept_pipeline.with_options(flow_run_name=f"cell-{i}-{cell.id}")(
                params=str(params_path), root=str(cdir), parent_run_id=study_id,
                data_ready=True, run_name=f"cell {cell.label}", evaluate=False)
            write_json(cdir / "done.json", {"cell": cell.id, "label": cell.label})
        evaluate_chosen(root_path, spec, cells, client, study_id)
        summary = build_report(root_path, spec, cells)
        out = layout.study_report(root_path, spec.name)
        for name in ("summary.md", "summary.json", "gap.csv", "gap_as_trained.csv"):
            log_artifact(client, study_id, str(out / name), "study")
        log_artifact(client, study_id, str(out / "plots"), "study/plots")
        for r in summary["rows"]:
            if "as_trained_vs_std" in r:
                client.log_metric(study_id, f"vs_std_pct/{r['variant']}/"
                                  f"{st.digest(r['setting'], 6)}",
                                  r["as_trained_vs_std"]["value"],
                                  step=int(r["tokens_per_source"]))
    print(sr.markdown(summary))
    return summary


def _pretrain_results(root: Path, spec: st.StudySpec, cells: list[st.Cell]) -> dict:
    out = {}
    for cell in cells:
        cdir = layout.study_cell(root, spec.name, cell.id)
        out[cell.id], _ = read_results(cdir, cell.cfg.train.variants, cell.cfg.train.seeds)
    return out


def evaluate_chosen(root: Path, spec: st.StudySpec, cells: list[st.Cell], client,
                    study_id: str) -> None:
    """The test-side evaluation of each variant at the tuning point validation chose (and of
    the untrained body in STD's cell), nested under that cell's MLflow run. Points not chosen
    are never evaluated on test data. An evaluation already written is not repeated."""
    log = get_run_logger()
    choice = st.choose(cells, _pretrain_results(root, spec, cells))
    for setting, chosen in choice.items():
        ref = chosen.get("std") or next(iter(chosen.values()))
        todo = [(v, c) for v, c in chosen.items()]
        if ref.cfg.evaluate.reference:
            todo.append((REFERENCE, ref))
        for variant, cell in todo:
            cdir = layout.study_cell(root, spec.name, cell.id)
            parent = _cell_run(client, study_id, cell)
            for seed in cell.cfg.train.seeds:
                if layout.evaluate_metrics(cdir, variant, seed).is_file():
                    continue
                log.info("evaluate %s seed %d at %s (chosen on validation for %s)", variant,
                         seed, cell.label, setting)
                evaluate_task(cell.cfg.with_train_seed(seed), variant, cdir, parent)


def _cell_run(client, study_id: str, cell: st.Cell) -> str | None:
    runs = client.search_runs(
        [client.get_run(study_id).info.experiment_id],
        f"tags.`mlflow.parentRunId` = '{study_id}' and attributes.run_name = 'cell {cell.label}'"
        " and attributes.status = 'FINISHED'", max_results=1, order_by=["start_time DESC"])
    return runs[0].info.run_id if runs else study_id


def build_report(root: Path, spec: st.StudySpec, cells: list[st.Cell]) -> dict:
    """results/study/<name>/ from the cells' outputs (every variant at its own best point)."""
    pretrain, evals = {}, {}
    for cell in cells:
        cdir = layout.study_cell(root, spec.name, cell.id)
        pretrain[cell.id], evals[cell.id] = read_results(
            cdir, cell.cfg.train.variants, cell.cfg.train.seeds)
    choice = st.choose(cells, pretrain)
    rows, settings = [], []
    for cell in cells:
        if cell.setting_label in settings:
            continue
        settings.append(cell.setting_label)
        chosen = choice[cell.setting_label]
        metrics, ev = sr.merged(chosen, pretrain, evals)
        ref = chosen.get("std") or next(iter(chosen.values()))
        summary = report.comparison(metrics, ev, report.settings_of(ref.cfg), spec.bootstrap)
        rows += sr.rows_of(spec, cell, summary, chosen)
    study = {"name": spec.name, "cells": len(cells), "settings": settings,
             "tune_points": len(cells) // max(len(settings), 1), "seeds": spec.seeds,
             "grid": spec.grid, "tune": spec.tune, "rows": rows,
             "reference": REFERENCE, "verdict": sr.study_verdict(rows)}
    out = layout.study_report(root, spec.name)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out / "plots") as tmp:
        sr.plot(rows, tmp)
    write_text(out / "gap.csv", sr.gap_csv(rows))
    write_text(out / "gap_as_trained.csv", sr.gap_long_csv(rows))
    write_text(out / "summary.md", sr.markdown(study))
    write_json(out / "summary.json", study)
    return study


def main(argv: list[str] | None = None) -> int:
    import sys

    from dept_core.errors import DeptError

    p = argparse.ArgumentParser(prog="python -m flows.study", description=__doc__.splitlines()[0])
    p.add_argument("--study", required=True, help="the study file (e.g. configs/study-cpu.yaml)")
    add_no_wait_arg(p)
    args = p.parse_args(argv)
    try:  # the study file and every cell's config are checked before any work
        spec = st.load_study(Path.cwd() / args.study)
        st.expand(spec, Path.cwd())
    except DeptError as exc:
        print(f"dept: error: {exc}", file=sys.stderr)
        return 2
    args.params, args.overrides = spec.params, list(spec.set)
    return run_stage("study", args, lambda: study_flow(args.study), check=check_tracking_uri)


if __name__ == "__main__":
    raise SystemExit(main())
