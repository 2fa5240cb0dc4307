"""kill -9 of `dept run` at named points, then the same command again, until it completes.

One project goes through a chain of runs, each SIGKILLed (by the DEPT_FAULT_KILL_AT hook in
dept_core/faults.py) at a different point: while prepare swaps its output in, while a tokenizer
trains, mid-round, between a checkpoint's tensors and its pointer, while metrics go to MLflow.
After every kill nothing a later stage reads is corrupt; the last, uninterrupted run must end
with exactly the outputs of the uninterrupted reference run (conftest `reference_run`).
tests/test_resume.py covers kill -9 of the core's training loop alone (no orchestration).
"""

from __future__ import annotations

import hashlib
import json
import signal
from pathlib import Path

import pytest

from dept_core import checkpoint as ck
from dept_core import tokenizers as tk
from tests.conftest import CLI_VARIANTS, cli_params, dept_cli, write_params

TIMING = {"seconds", "tokens_per_s", "wall_seconds"}

# The chain, in order: (kill point[@n-th hit], what must hold right after the kill).
CHAIN = [
    ("commit:prepared", "prepare killed before its rename: no data/prepared yet"),
    ("spm:global", "tokenizers killed while training: no data/tokenizers yet"),
    ("source-trained@5", "glob killed mid-round 2 (3 sources a round): round 1 is latest"),
    ("checkpoint-write@2", "killed between a checkpoint's tensors and its pointer"),
    ("mlflow-log@4", "killed while sending a round's metrics to MLflow"),
]


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_nothing_corrupt(root: Path) -> None:
    """Whatever a later stage reads is either absent or complete and readable."""
    prepared = root / "data/prepared"
    if prepared.exists():
        manifest = json.loads((prepared / "manifest.json").read_text())
        for name, entry in manifest["sources"].items():
            for split, info in entry["splits"].items():
                assert _digest(prepared / name / f"{split}.jsonl") == info["sha256"]
    tokenizers = root / "data/tokenizers"
    if tokenizers.exists():
        json.loads((tokenizers / "stats.json").read_text())
        for model in tokenizers.rglob("spm.model"):
            tk.load(model)
    for ckpt_dir in (root / "checkpoints").glob("*") if (root / "checkpoints").exists() else []:
        ck.load_latest(ckpt_dir)  # raises on a corrupt or dangling checkpoint
    for path in (root / "results").rglob("*.json") if (root / "results").exists() else []:
        json.loads(path.read_text())


def _outputs(root: Path) -> dict[str, object]:
    """Every output a user or a later stage reads, timing fields removed."""
    out: dict[str, object] = {}
    for top in ("data/prepared", "data/tokenizers", "results/pretrain", "results/evaluate"):
        for p in sorted((root / top).rglob("*")):
            # wall times differ by design; .gitignore files are written by DVC for its outputs
            if not p.is_file() or p.name in ("timings.json", ".gitignore"):
                continue
            key = str(p.relative_to(root))
            out[key] = _strip(json.loads(p.read_text())) if p.suffix == ".json" \
                else _digest(p)
    return out


def _final_mlflow_curves(root: Path) -> dict[str, list[tuple[int, float]]]:
    """val_bpb_mean per round of each variant's run under the last finished pipeline run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    exp = client.get_experiment_by_name("dept")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])
    parent = next(r for r in runs if r.data.tags.get("stage") == "pipeline"
                  and r.info.status == "FINISHED")
    out = {}
    for r in runs:
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id \
                and r.data.tags.get("dept.pretrained") == "1":
            hist = client.get_metric_history(r.info.run_id, "val_bpb_mean")
            out[r.data.tags["variant"]] = sorted((m.step, m.value) for m in hist)
    return out


@pytest.fixture(scope="module")
def chain(tmp_path_factory, cli_env):
    """Run the chain of killed runs, then one to completion; return (root, kill log)."""
    root = tmp_path_factory.mktemp("faults")
    write_params(root, cli_params())
    log = []
    for point, _ in CHAIN:
        proc = dept_cli(["run"], root, {**cli_env, "DEPT_FAULT_KILL_AT": point})
        log.append((point, proc.returncode))
        assert proc.returncode == -signal.SIGKILL, (point, proc.stderr[-3000:])
        assert_nothing_corrupt(root)
        if point == "commit:prepared":
            assert not (root / "data/prepared").exists()
        if point == "spm:global":
            assert (root / "data/prepared/manifest.json").is_file()
            assert not (root / "data/tokenizers").exists()
        if point == "source-trained@5":
            (glob_ckpt,) = (root / "checkpoints").glob("glob-*")
            assert json.loads((glob_ckpt / "latest.json").read_text()) == {"round": 1}
    final = dept_cli(["run"], root, cli_env)
    assert final.returncode == 0, final.stderr[-3000:]
    return root, log


def test_every_kill_point_was_reached(chain):
    _, log = chain
    assert [p for p, _ in log] == [p for p, _ in CHAIN]


def test_resumed_outputs_equal_an_uninterrupted_run(chain, reference_run):
    root, _ = chain
    got, want = _outputs(root), _outputs(reference_run)
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key] == want[key], key
    for variant in CLI_VARIANTS:
        assert (root / f"results/pretrain/{variant}/seed-0/metrics.json").is_file()


def test_no_temporary_or_partial_file_is_left(chain):
    root, _ = chain
    assert_nothing_corrupt(root)
    strays = [p for top in ("data", "results", "checkpoints")
              for p in (root / top).rglob(".*") if p.name.endswith((".tmp", ".old"))]
    assert strays == []


def test_tracking_has_every_round_after_resume(chain, reference_run):
    """The finished pipeline run's children hold all rounds (finished ones re-logged)."""
    root, _ = chain
    got, want = _final_mlflow_curves(root), _final_mlflow_curves(reference_run)
    assert set(got) == set(CLI_VARIANTS)
    assert got == want


def test_runs_a_kill_left_running_are_marked_killed_and_point_at_their_successor(chain):
    """Every MLflow run a kill -9 left RUNNING is KILLED once the work is continued, and its
    `dept.continued_by` tag names the run (same name, config and data) that continued it."""
    from mlflow.tracking import MlflowClient

    root, _ = chain
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("dept").experiment_id])
    by_id = {r.info.run_id: r for r in runs}
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    killed = [r for r in runs if r.info.status == "KILLED"]
    # killed mid-round (the pipeline's run + glob's), at the checkpoint write and at the
    # MLflow log: the runs those processes had open
    assert {r.data.tags.get("stage") for r in killed} >= {"pipeline"}
    assert "glob" in {r.info.run_name for r in killed}
    for run in killed:
        successor = by_id[run.data.tags["dept.continued_by"]]
        assert successor.data.tags["dept.key"] == run.data.tags["dept.key"]
        assert successor.info.run_name == run.info.run_name
        assert successor.info.start_time > run.info.start_time
