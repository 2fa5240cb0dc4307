"""`dvc repro` on the smoke config (a real DVC pipeline, one process per stage, the session's
Prefect server, the warm stage runner as `make demo` has it): one MLflow parent run for the
execution, one child per variant holding its pre-training curves and its evaluation, and the
comparison on the parent. And the warm runner's fallbacks."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import CLI_VARIANTS, cli_params, write_params

REPO = Path(__file__).resolve().parent.parent
COPY = ["dvc.yaml", ".dvc/config", ".dvcignore", "dept_core", "flows", "tasks", "corpus",
        "flower_app"]  # (the pretrain stage depends on the Flower app)


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root,
                   check=True, capture_output=True)


@pytest.fixture(scope="module")
def repro(tmp_path_factory, cli_env):
    root = tmp_path_factory.mktemp("dvc")
    for name in COPY:
        src, dst = REPO / name, root / name
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
    write_params(root, cli_params())
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "project")
    env = _env(cli_env, root)
    warm = subprocess.Popen([sys.executable, "-m", "flows.warm", "--socket",
                             env["DEPT_WARM_SOCKET"]], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=open(root / "warm.log", "w"))
    try:
        proc = subprocess.run([DVC, "repro"], cwd=root, env=env, capture_output=True,
                              text=True, timeout=1200)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        yield root
    finally:
        warm.terminate()
        warm.wait(30)


DVC = str(Path(sys.executable).parent / "dvc")


def _env(cli_env: dict, root: Path) -> dict:
    return {**cli_env, "PATH": f"{Path(sys.executable).parent}:{cli_env['PATH']}",
            "DEPT_WARM_SOCKET": str(root / "warm.sock")}


def test_every_stage_ran_in_a_child_of_the_warm_runner(repro):
    log = (repro / "warm.log").read_text()
    assert "warm runner ready" in log and "refused" not in log
    for stage in ("prepare", "tokenizers", "compare", *(f"pretrain --variant {v} --seed 0"
                                                        for v in CLI_VARIANTS),
                  *(f"evaluate --variant {v} --seed 0" for v in [*CLI_VARIANTS, "random"])):
        assert f"{stage}: exit 0" in log, stage


def test_dvc_repro_is_one_parent_run_with_one_child_per_variant(repro):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{repro}/mlflow.db")
    exp = client.get_experiment_by_name("dept").experiment_id
    runs = client.search_runs([exp], max_results=1000)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.data.tags["stage"] == "pipeline" and parent.info.status == "FINISHED"
    assert parent.info.run_name == f"pipeline {parent.data.tags['dept.config_digest']}"
    kids = {r.info.run_name: r for r in runs
            if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert len(kids) == len(runs) - 1  # nothing outside the execution
    assert set(kids) == {*CLI_VARIANTS, "random"}
    for v in CLI_VARIANTS:  # the pretrain stage's run, reopened by the evaluate stage
        run = kids[v]
        assert run.info.status == "FINISHED"
        assert run.data.tags["dept.pretrained"] == run.data.tags["dept.evaluated"] == "1"
        curve = client.get_metric_history(run.info.run_id, "val_bpb_mean")
        assert [m.step for m in curve] == [1, 2], v
        for key in ("final/val_bpb_mean", "final/comm_bytes_total",
                    "final/embedding_mb_per_source", "test_bpb_id_mean",
                    "cpt_fresh_bpb_id_mean", "cpt_fresh_bpb_ood_mean",
                    "plasticity_bpb_auc_mean", "downstream/accuracy"):
            assert key in run.data.metrics, (v, key)
    assert "final/val_bpb_mean" not in kids["random"].data.metrics
    arts = {a.path for a in client.list_artifacts(parent.info.run_id, "compare")}
    assert {"compare/summary.md", "compare/plots"} <= arts


def test_an_evaluation_in_a_new_execution_still_gives_each_variant_a_complete_run(repro,
                                                                                cli_env):
    """Changing only an evaluation setting re-runs only the evaluate stages (DVC keeps the
    pre-training); the new execution's variant runs carry the pre-training curves replayed
    from metrics.json, equal to the ones logged live."""
    from mlflow.tracking import MlflowClient

    proc = subprocess.run([DVC, "exp", "run", "-S", "evaluate.plasticity_steps=6"], cwd=repro,
                          env=_env(cli_env, repro), capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Running stage 'pretrain" not in proc.stdout
    client = MlflowClient(f"sqlite:///{repro}/mlflow.db")
    exp = client.get_experiment_by_name("dept").experiment_id
    parents = client.search_runs([exp], "tags.stage = 'pipeline'",
                                 order_by=["attributes.start_time DESC"])
    new, old = parents
    assert new.data.tags["dept.dvc_exp"] and new.info.run_name.startswith(
        new.data.tags["dept.dvc_exp"] + " ")
    assert new.data.tags["dept.config_digest"] != old.data.tags["dept.config_digest"]

    def curves(parent):
        kids = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        return {r.info.run_name: sorted((m.step, m.value) for m in client.get_metric_history(
            r.info.run_id, "comm/cumulative_bytes")) for r in kids if r.info.run_name != "random"}

    assert curves(new) == curves(old) and len(curves(new)) == len(CLI_VARIANTS)


def test_a_stage_runs_itself_when_no_warm_runner_can_serve_it(repro, cli_env, tmp_path):
    """No runner at the socket, or a runner serving another directory: the stage runs in its
    own process, with the same result (here: the one-line error of a bad override, status 2)."""
    bad = [sys.executable, "-m", "flows.stage", "compare", "--set", "train.rounds=-1"]
    served = subprocess.run(bad, cwd=repro, env=_env(cli_env, repro), capture_output=True,
                            text=True, timeout=300)  # through the runner: the same contract
    assert served.returncode == 2 and served.stderr.count("dept: error: ") == 1, served.stderr
    assert "compare --set train.rounds=-1: exit 2" in (repro / "warm.log").read_text()
    env = {**_env(cli_env, repro), "DEPT_WARM_SOCKET": str(tmp_path / "nobody.sock")}
    proc = subprocess.run(bad, cwd=repro, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.count("dept: error: ") == 1, proc.stderr
    assert "train.rounds" in proc.stderr
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    sock = str(tmp_path / "w.sock")
    warm = subprocess.Popen([sys.executable, "-m", "flows.warm", "--socket", sock],
                            cwd=elsewhere, env={**env, "DEPT_WARM_SOCKET": sock},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):  # listening (it imports after binding: the request then waits)
            if Path(sock).exists():
                break
            time.sleep(0.05)
        proc = subprocess.run(bad, cwd=repro, env={**env, "DEPT_WARM_SOCKET": sock},
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and "train.rounds" in proc.stderr, proc.stderr
    finally:
        warm.terminate()
        err = warm.communicate(timeout=30)[1]
    assert f"refused compare: working directory {repro} is not {elsewhere}" in err
