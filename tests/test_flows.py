"""The stages as Prefect flows on a real (temporary, local) Prefect server, and the CLI."""

import json
import shutil
import subprocess
import sys

import pytest

from dept_core.errors import DataError

SMOKE = "configs/smoke.yaml"


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_server):
    """A project directory that went through the whole pipeline flow on the smoke config."""
    from flows.pipeline import dept_pipeline

    root = tmp_path_factory.mktemp("flows")
    shutil.copy(SMOKE, root / "params.yaml")
    dept_pipeline(root=str(root))
    return root


def test_mlflow_holds_a_child_run_per_variant_with_round_metrics(project):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{project}/mlflow.db")
    exp = client.get_experiment_by_name("dept")
    runs = client.search_runs([exp.experiment_id])
    parent = [r for r in runs if r.data.tags.get("stage") == "pipeline"]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    digest = parent[0].data.tags["dept.config_digest"]
    assert parent[0].info.run_name == f"pipeline {digest}"
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    # one run per variant (named by it) holding pre-training and evaluation; and the floor
    assert sorted(r.info.run_name for r in kids) == sorted(
        ["glob", "trim", "spec", "spec_opt", "std", "random"])
    evals = {r.data.tags["variant"]: r for r in kids}
    children = {v: r for v, r in evals.items() if v != "random"}
    assert all(r.data.tags["dept.pretrained"] == "1" for r in children.values())
    for variant, run in evals.items():
        assert run.info.status == "FINISHED"
        assert run.data.metrics["cpt_fresh_bpb_id_mean"] > 0
        assert 0 <= run.data.metrics["downstream/accuracy"] <= 1
        curve = client.get_metric_history(run.info.run_id, "plasticity_bpb/es")
        assert [m.step for m in curve] == [0, 5, 10], variant
    for variant, run in children.items():
        assert run.data.params["train.rounds"] == "2" and run.data.tags["git_commit"]
        for key in ("val_bpb_mean", "comm/bytes_up", "comm/cumulative_bytes"):
            history = client.get_metric_history(run.info.run_id, key)
            assert [m.step for m in history] == [1, 2], (variant, key)
        assert run.data.metrics["final/val_bpb_mean"] > 0
        assert [i.dataset.name for i in run.inputs.dataset_inputs] == ["prepared"]
    arts = {a.path for a in client.list_artifacts(parent[0].info.run_id, "compare")}
    assert {"compare/summary.md", "compare/summary.json", "compare/plots"} <= arts
    plots = {a.path for a in client.list_artifacts(parent[0].info.run_id, "compare/plots")}
    assert {"compare/plots/bpb_per_source.png", "compare/plots/plasticity.png",
            "compare/plots/bpb_vs_comm.png"} <= plots
    models = {a.path for a in client.list_artifacts(children["glob"].info.run_id, "models")}
    assert "models/global" in models
    spec = client.get_metric_history(children["spec"].info.run_id, "comm/cumulative_bytes")
    glob = client.get_metric_history(children["glob"].info.run_id, "comm/cumulative_bytes")
    assert spec[-1].value < glob[-1].value


def test_stage_outputs(project):
    manifest = json.loads((project / "data/prepared/manifest.json").read_text())
    assert set(manifest["sources"]) == {"en", "de", "ja", "es"}
    stats = json.loads((project / "results/tokenizers/stats.json").read_text())
    assert all(e["vocab_size"] < stats["global"]["vocab_size"]
               for e in stats["subvocab"].values())
    for variant in ("glob", "trim", "spec", "spec_opt", "std"):
        m = json.loads((project / f"results/pretrain/{variant}/seed-0/metrics.json").read_text())
        for key in ("rounds", "sources", "body_params", "embedding_params", "comm"):
            assert key in m
        for key in ("bytes_down_total", "bytes_up_total", "components", "per_round"):
            assert key in m["comm"]
        assert len(m["comm"]["per_round"]) == m["rounds"] == 2
        assert m["participation"] == {"en": 2, "de": 2, "ja": 2}  # balanced: every round
    for variant in ("glob", "std", "spec"):
        ev = json.loads((project / f"results/evaluate/{variant}/seed-0/metrics.json").read_text())
        trained = ev["as_trained"]
        assert trained["in_distribution"] and trained["in_distribution_bpb_mean"] > 0
        assert set(trained["out_of_distribution"]) == (set() if variant == "spec" else {"es"})
        # the paper's protocol: every body, STD included, continued with a fresh embedding
        assert set(ev["continued"]) == ({"fresh"} if variant == "spec" else
                                        {"fresh", "pretrained"})
        fresh = ev["continued"]["fresh"]
        assert fresh["steps"] == 2  # round(0.17 * 2 rounds * 5 local steps)
        assert set(fresh["in_distribution"]) == {"en", "de", "ja"}
        assert set(fresh["out_of_distribution"]) == {"es"}
        assert [p["step"] for p in ev["plasticity"]["curves"]["es"]] == [0, 5, 10]
        docs = fresh["in_distribution"]["en"]["docs"]   # per-document losses: paired intervals
        assert len(docs["loss"]) == len(docs["bytes"]) == len(
            (project / "data/prepared/en/test.jsonl").read_text().splitlines())
        ds = ev["downstream"]
        assert ds["task"]["n_test"] > 0 and ds["task"]["train_langs"] == ["de", "en", "ja"]
        assert set(ds["after_cpt"]["accuracy_per_language"]) == {"en", "de", "ja", "es"}
        # as trained: SPEC reads the held-out language with no model of its own
        assert set(ds["as_trained"]["accuracy_per_language"]) == (
            {"en", "de", "ja"} if variant == "spec" else {"en", "de", "ja", "es"})
        assert set(ds) >= {"as_trained", "after_cpt", "frozen_probe"}
        assert "ceilings" not in ds                      # computed once, by the reference
        assert ev["probe"]["lr"] in (0.01, 0.03, 0.1) and ev["probe"]["steps"] == 10
        assert set(ev["zero_shot"]) >= {"as_trained", "probe"}
        assert (ev["zero_shot"]["as_trained"]["correct"]["es"] is None) == (variant == "spec")
    ref = json.loads((project / "results/evaluate/random/seed-0/metrics.json").read_text())
    assert "as_trained" not in ref and ref["downstream"]["as_trained"]["accuracy"] >= 0
    assert ref["downstream"]["ceilings"]["bag_of_words"]["accuracy"] > \
        ref["downstream"]["ceilings"]["majority"]["accuracy"]
    summary = (project / "results/compare/summary.md").read_text()
    assert summary.startswith("# DEPT comparison") and "| std |" in summary
    for heading in ("## Verdict", "## Test bits/byte with 95 % intervals",
                    "### Per source", "## Plasticity", "## Downstream", "## Pre-training",
                    "## Frozen-body probe", "## Zero-shot minimal pairs", "## CPT (fresh"):
        assert heading in summary
    assert "not distinguishable" in summary or " better" in summary or " worse" in summary
    data = json.loads((project / "results/compare/summary.json").read_text())
    bodies = {"std", "glob", "trim", "spec", "spec_opt", "random"}
    ds = data["evaluation"]["downstream"]["protocols"]
    assert set(ds) == {"as_trained", "after_cpt", "frozen_probe"}
    assert all(set(t) == bodies | {"majority", "bag_of_words"} for t in ds.values())
    assert set(data["evaluation"]["zero_shot"]["protocols"]["probe"]["rows"]) == bodies
    plast = (project / "results/compare/plasticity.csv").read_text().splitlines()
    assert plast[0] == "step,variant,value"
    assert [r.split(",")[1] for r in plast[1::3]] == ["std", "glob", "trim", "spec", "spec_opt",
                                                      "random"]
    models = project / "results/pretrain/spec/seed-0/models"
    assert {p.name for p in models.iterdir()} <= {"en", "de", "ja"}
    assert (project / "results/pretrain/std/seed-0/models/global/model.safetensors").is_file()


def test_flow_failure_keeps_previous_outputs(project):
    from flows.prepare import prepare_flow

    before = (project / "data/prepared/manifest.json").read_bytes()
    with pytest.raises(DataError, match="source 'xx'"):
        prepare_flow(root=str(project), overrides=[
            'data.sources=[{name: xx, kind: files, paths: ["missing/*.txt"]}]',
            "train.sources_per_round=1", "tokenizers.per_source_vocab_overrides={}"])
    assert (project / "data/prepared/manifest.json").read_bytes() == before


def _dept(*args, cwd):
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args,message", [
    (["prepare", "--set", "prepare.max_bytes=1"], "prepare.max_bytes: unknown key"),
    (["train", "--variant", "spec", "--set", "train.rounds=-1"],
     "train.rounds: Input should be greater than 0 (got -1)"),
    (["tokenizers", "--set", "train.sources_per_round=9"],
     "train.sources_per_round: 9 is more than the 3 training sources"),
    (["prepare", "--params", "nope.yaml"], "nope.yaml: no such file"),
])
def test_cli_bad_config_is_one_line_and_exit_2(tmp_path, args, message):
    shutil.copy(SMOKE, tmp_path / "params.yaml")
    proc = _dept(*args, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("dept: error: ")
    assert message in proc.stderr
    assert not (tmp_path / "data").exists()


def test_cli_unknown_variant(tmp_path):
    proc = _dept("train", "--variant", "fedavg", cwd=tmp_path)
    assert proc.returncode == 2 and "invalid choice: 'fedavg'" in proc.stderr


def test_dept_without_a_prefect_server_starts_a_temporary_one_and_stops_it(tmp_path, cli_env):
    """No PREFECT_API_URL: `dept` starts a temporary Prefect server (while it imports), runs
    the stage against it, and the server is gone when `dept` exits."""
    import re
    import socket

    from tests.conftest import cli_params, write_params

    write_params(tmp_path, cli_params())
    env = {k: v for k, v in cli_env.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / ".prefect")
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "prepare"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    port = int(re.search(r"temporary Prefect server on http://127.0.0.1:(\d+)",
                         proc.stderr).group(1))
    assert (tmp_path / "data/prepared/manifest.json").is_file()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    # bad input starts no server at all
    bad = subprocess.run([sys.executable, "-m", "flows.cli", "prepare", "--set", "seed=-1"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "temporary Prefect server" not in bad.stderr, bad.stderr


def test_the_comparison_table_is_an_artefact_of_the_pipeline_flow_run(project):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["dept-comparison"])))
        flows = {client.read_flow(client.read_flow_run(a.flow_run_id).flow_id).name: a
                 for a in arts if a.flow_run_id}
    assert {"dept_pipeline", "compare"} <= set(flows)
    assert "| variant |" in flows["dept_pipeline"].data


def test_metrics_queue_writes_in_order_and_an_error_surfaces_when_the_run_ends(tmp_path):
    """The sink's background writer: every queued batch is in the store, in order, once the
    run ends; a batch the store refuses fails the run instead of vanishing."""
    from mlflow.tracking import MlflowClient

    from tasks import tracking

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.create_experiment("sink")
    run = client.create_run(exp).info.run_id
    sink = tracking.MlflowSink(client, run)
    for step in range(30):
        sink.log_steps([({"loss": 100.0 - step}, step)])
    with tracking.ended(client, run):
        pass
    hist = client.get_metric_history(run, "loss")
    assert [m.step for m in sorted(hist, key=lambda m: m.step)] == list(range(30))
    assert client.get_run(run).info.status == "FINISHED"

    bad = client.create_run(exp).info.run_id
    client.set_terminated(bad, "FINISHED")
    client.delete_run(bad)  # a deleted run refuses writes
    tracking.MlflowSink(client, bad).log({"loss": 1.0}, 0)
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match="active"):
        tracking.flush(bad)


def test_flow_heartbeats_are_off_for_runs_from_a_terminal_unless_configured(monkeypatch):
    from prefect.settings import get_current_settings

    from flows.common import _no_heartbeats

    monkeypatch.delenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", raising=False)
    with _no_heartbeats():
        assert get_current_settings().flows.heartbeat_frequency is None
    assert get_current_settings().flows.heartbeat_frequency is not None  # restored
    monkeypatch.setenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "60")
    with _no_heartbeats():  # (the setting is read from the environment per context)
        assert get_current_settings().flows.heartbeat_frequency != None  # noqa: E711


def test_the_stage_end_waits_for_queued_run_events_only(monkeypatch):
    """The stage's last line waits for Prefect's queued run events, not for the API log
    worker (which shares the instance registry and never marks its batched items done): that
    wait cost every stage its whole timeout."""
    import queue

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    import flows.common as common

    def worker(cls, pending: int):
        w = cls.__new__(cls)  # the real class, not started: only its queue is read
        w._queue = queue.Queue()
        for _ in range(pending):
            w._queue.put(object())
            w._queue.get()  # taken, not marked done
        return w

    sleeps = []
    monkeypatch.setattr(common.time, "sleep", lambda s: sleeps.append(s))
    monkeypatch.setattr(EventsWorker, "_instances", {"log": worker(APILogWorker, 48)})
    common._settle_prefect_events(timeout=5.0)
    assert sleeps == []  # the log worker's 48 batched items are not waited for
    monkeypatch.setattr(EventsWorker, "_instances", {"log": worker(APILogWorker, 48),
                                                    "events": worker(EventsWorker, 3)})
    common._settle_prefect_events(timeout=0.2)
    assert sleeps  # queued run events are
