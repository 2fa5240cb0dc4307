"""Ctrl-C and SIGTERM, as a user sends them: to the whole process group of a running command.

The DEPT_FAULT_SIGNAL_AT hook (dept_core/faults.py) sends the real signal to the command's
process group at a named point (mid-round here), so the test does not race the run. After the
signal the command must end within seconds with one line and status 130 (143 for SIGTERM),
no traceback, its MLflow runs KILLED, no server or runner left behind; the same command then
resumes and ends with exactly the outputs of an uninterrupted run (conftest `reference_run`).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, cli_params, write_params
from tests.test_faults import _outputs, assert_nothing_corrupt

MID_ROUND = "source-trained@5"   # glob, round 2 of 2, its second of 3 sources


def _start(args: list[str], root: Path, env: dict) -> subprocess.Popen:
    """A command in a session (and process group) of its own, as a terminal runs a job; the
    fault hook signals that group (DEPT_FAULT_SIGNAL_PGID), as the terminal's Ctrl-C does."""
    wrapped = ["bash", "-c", 'export DEPT_FAULT_SIGNAL_PGID=$$; exec "$@"', "job", *args]
    return subprocess.Popen(wrapped, cwd=root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _runs(root: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    exp = client.get_experiment_by_name("dept")
    return client.search_runs([exp.experiment_id], max_results=1000) if exp else []


def _flow_runs(prefect_home: Path) -> list[tuple[str, str]]:
    """(flow name, state type) of every flow run in the temporary server's database (read
    after the server stopped)."""
    import sqlite3

    with sqlite3.connect(prefect_home / "prefect.db") as db:
        return db.execute("SELECT flow.name, flow_run.state_type FROM flow_run "
                          "JOIN flow ON flow.id = flow_run.flow_id").fetchall()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _signalled_then_resumed(root: Path, cmd: list[str], env: dict, how: str = "") -> tuple:
    proc = _start(cmd, root, {**env, "DEPT_FAULT_SIGNAL_AT": MID_ROUND + how})
    out, err = proc.communicate(timeout=900)
    return proc, out, err


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory, cli_env):
    """`dept run` with its own temporary Prefect server (no PREFECT_API_URL: the server the
    issue saw killed first by the terminal's Ctrl-C), SIGINT mid-round, then the same
    command to completion."""
    root = tmp_path_factory.mktemp("interrupted")
    write_params(root, cli_params())
    env = {k: v for k, v in cli_env.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(root / ".prefect")
    proc, out, err = _signalled_then_resumed(root, [sys.executable, "-m", "flows.cli", "run"],
                                             env)
    state = {"code": proc.returncode, "stderr": err, "runs": _runs(root),
             "outputs_after_signal": _outputs(root), "flow_runs": _flow_runs(root / ".prefect")}
    assert_nothing_corrupt(root)
    final = _start([sys.executable, "-m", "flows.cli", "run"], root, env)
    _, ferr = final.communicate(timeout=900)
    assert final.returncode == 0, ferr[-3000:]
    return root, state


def test_sigint_stops_dept_run_with_one_line_and_status_130(interrupted_run):
    _, state = interrupted_run
    err = state["stderr"]
    assert state["code"] == 130, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("dept: interrupted")]
    assert lines == ["dept: interrupted at pretrain glob, round 2/2; run the same command to "
                     "resume"], err[-3000:]
    assert "Traceback" not in err
    assert "Unable to connect" not in err and "Error logging to API" not in err
    # the temporary Prefect server was not killed by the signal: dept stopped it afterwards
    port = int(re.search(r"temporary Prefect server on http://127.0.0.1:(\d+)", err).group(1))
    assert not _port_open(port)


def test_the_interrupted_mlflow_runs_end_killed_not_running(interrupted_run):
    _, state = interrupted_run
    runs = state["runs"]
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    assert {r.info.run_name for r in runs if r.info.status == "KILLED"} >= {"glob"}


def test_the_interrupted_prefect_flow_runs_end_crashed_or_cancelled(interrupted_run):
    _, state = interrupted_run
    flows = state["flow_runs"]
    assert [f for f in flows if f[1] in ("RUNNING", "PENDING", "SCHEDULED")] == [], flows
    assert {f[0] for f in flows if f[1] in ("CRASHED", "CANCELLED")} >= {"dept_pipeline"}, flows


def test_the_same_command_resumes_to_the_uninterrupted_outputs(interrupted_run, reference_run):
    root, _ = interrupted_run
    got, want = _outputs(root), _outputs(reference_run)
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key] == want[key], key
    runs = _runs(root)
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []


def test_sigterm_stops_dept_train_with_status_143(tmp_path, reference_run, cli_env):
    """SIGTERM (what a scheduler or `kill` sends) mid-round: status 143, one line, and the
    training resumes from its last finished round to the same model."""
    import shutil

    root = tmp_path / "p"
    shutil.copytree(reference_run, root, symlinks=True,
                    ignore=shutil.ignore_patterns("checkpoints", "mlruns"))
    shutil.rmtree(root / "results/pretrain/glob")
    cmd = [sys.executable, "-m", "flows.cli", "train", "--variant", "glob"]
    proc, _, err = _signalled_then_resumed(root, cmd, cli_env, ":TERM")
    assert proc.returncode == 143, err[-3000:]
    assert "dept: interrupted at pretrain glob, round 2/2; run the same command to resume" \
        in err.splitlines() and "Traceback" not in err
    assert (root / "checkpoints").exists() and not (root / "results/pretrain/glob").exists()
    again = _start(cmd, root, cli_env)
    _, err2 = again.communicate(timeout=600)
    assert again.returncode == 0, err2[-3000:]
    for name in ("model.safetensors", "spm.model"):
        for src in ("en", "global"):
            a = root / f"results/pretrain/glob/seed-0/models/{src}/{name}"
            b = reference_run / f"results/pretrain/glob/seed-0/models/{src}/{name}"
            assert a.read_bytes() == b.read_bytes()


def test_a_second_signal_during_clean_up_exits_at_once(tmp_path):
    """The handler records the first signal; a second one ends the process immediately."""
    code = ("import os, signal, time; from dept_core import interrupt; interrupt.install(); "
            "interrupt.where('pretrain glob', 'round 1/2'); os.kill(os.getpid(), "
            "signal.SIGINT); time.sleep(0.1); assert interrupt.requested() == signal.SIGINT; "
            "os.kill(os.getpid(), signal.SIGINT); time.sleep(5); print('not reached')")
    t = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 130 and time.monotonic() - t < 4
    assert "not reached" not in out.stdout
    assert "interrupted again at pretrain glob, round 1/2" in out.stderr


@pytest.fixture(scope="module")
def interrupted_demo(tmp_path_factory, cli_env):
    """`scripts/with_prefect_server.sh dvc repro` (what `make demo` runs: a shared Prefect
    server, the warm stage runner, DVC), SIGINT to its process group mid-round."""
    from tests.test_dvc import COPY, DVC, _git

    import shutil

    root = tmp_path_factory.mktemp("demo-interrupted")
    for name in [*COPY, "scripts"]:
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
    env = {k: v for k, v in cli_env.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(root / ".prefect"), TMPDIR=str(root),
               PATH=f"{Path(sys.executable).parent}:{env['PATH']}")
    cmd = ["bash", "scripts/with_prefect_server.sh", DVC, "repro"]
    t = time.monotonic()
    proc, out, err = _signalled_then_resumed(root, cmd, env)
    state = {"code": proc.returncode, "out": out, "err": err, "seconds": time.monotonic() - t}
    final = _start(cmd, root, env)
    fout, ferr = final.communicate(timeout=1200)
    assert final.returncode == 0, (fout + ferr)[-3000:]
    return root, state


def test_sigint_stops_make_demo_within_seconds_and_leaves_no_process(interrupted_demo):
    root, state = interrupted_demo
    text = state["out"] + state["err"]
    assert state["code"] == 130, text[-3000:]
    assert "dept: interrupted at pretrain glob, round 2/2; run the same command to resume" \
        in text.splitlines()
    assert "Traceback" not in text
    port = int(re.search(r"Prefect server \(UI and API\) at http://127.0.0.1:(\d+)",
                         text).group(1))
    assert not _port_open(port)                                  # the server was stopped
    assert not list(root.glob("dept-warm-*.sock"))               # and the warm runner
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(root) not in ps


def test_make_demo_resumed_ends_with_the_uninterrupted_outputs(interrupted_demo,
                                                               reference_run):
    root, _ = interrupted_demo
    got, want = _outputs(root), _outputs(reference_run)
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key] == want[key], key
    runs = _runs(root)
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    assert json.loads((root / "results/compare/summary.json").read_text())["verdict"]
