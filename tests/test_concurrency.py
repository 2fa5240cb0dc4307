"""One project, one writer at a time (flows/lock.py): two real `dept run` in one directory,
a refusal under --no-wait that names the holder, and readers that never wait."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.conftest import cli_params, dept_cli, write_params
from tests.test_faults import _outputs


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, cli_env):
    """Two `dept run` in one new project, 2 s apart, each with its own temporary Prefect
    server (no PREFECT_API_URL): both create the project's Prefect store and MLflow store."""
    root = tmp_path_factory.mktemp("concurrent")
    write_params(root, cli_params())
    env = {k: v for k, v in cli_env.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(root / ".prefect")
    cmd = [sys.executable, "-m", "flows.cli", "run"]
    first = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    time.sleep(2)
    second = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    results = [(p.wait(timeout=1200), *p.communicate()) for p in (first, second)]
    return root, results


def test_both_runs_end_0_and_the_second_waited_naming_the_first(two_runs):
    root, ((c1, _, e1), (c2, _, e2)) = two_runs
    assert c1 == 0, e1[-3000:]
    assert c2 == 0, e2[-3000:]
    assert f"dept: waiting for {root.resolve()}: in use by pid" in e2
    assert "`" in e2 and "since" in e2                 # the holder's command and start time
    assert "Traceback" not in e1 + e2


def test_their_outputs_equal_a_run_alone(two_runs, reference_run):
    root, _ = two_runs
    got, want = _outputs(root), _outputs(reference_run)
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key] == want[key], key


def test_no_mlflow_run_is_left_running(two_runs):
    from mlflow.tracking import MlflowClient

    root, _ = two_runs
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("dept").experiment_id])
    assert runs and [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    assert not (root / ".dept.lock.json").exists()     # released: the holder note is gone


def test_no_wait_refuses_in_one_line_and_readers_do_not_wait(tmp_path, reference_run,
                                                             cli_env):
    from flows.lock import project_lock

    root = tmp_path / "p"
    shutil.copytree(reference_run, root, symlinks=True)
    with project_lock(root):                           # this test process is the writer
        t = time.monotonic()
        refused = dept_cli(["train", "--variant", "glob", "--no-wait"], root, cli_env)
        assert refused.returncode == 2
        lines = [ln for ln in refused.stderr.splitlines() if ln.startswith("dept:")]
        assert lines == [f"dept: error: {root.resolve()} is in use by pid {os.getpid()} on "
                         f"{os.uname().nodename} (`{lines[0].split('`')[1]}`, since "
                         f"{lines[0].split('since ')[1].split(')')[0]}); run again when it "
                         f"ends, or without --no-wait to wait for it"], refused.stderr
        compare = dept_cli(["compare"], root, cli_env)  # a reader: no wait
        assert compare.returncode == 0, compare.stderr[-2000:]
        assert time.monotonic() - t < 120 and "waiting for" not in compare.stderr
