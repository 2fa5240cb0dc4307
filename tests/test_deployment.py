"""A real local Prefect server, `dept serve` registering the scheduled deployment, and one
run triggered through it on the smoke config."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(url)


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_API_URL=f"http://127.0.0.1:{port}/api")
    log = open(home / "server.log", "w")
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=log, stderr=log,
                              start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/api/health", 120)
        yield env
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()


@pytest.mark.slow
def test_serve_registers_schedule_and_a_triggered_run_completes(prefect_api, tmp_path):
    shutil.copy("configs/smoke.yaml", tmp_path / "params.yaml")
    log = open(tmp_path / "serve.log", "w")
    serve = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--name", "smoke",
                              "--cron", "0 3 * * *"], cwd=tmp_path, env=prefect_api,
                             stdout=log, stderr=log, start_new_session=True)
    try:
        deadline, inspect = time.monotonic() + 120, None
        while time.monotonic() < deadline:
            inspect = subprocess.run([str(BIN / "prefect"), "deployment", "inspect",
                                      "dept_pipeline/smoke"], env=prefect_api,
                                     capture_output=True, text=True, timeout=60)
            if inspect.returncode == 0:
                break
            time.sleep(1)
        assert inspect is not None and inspect.returncode == 0, inspect.stderr
        assert "0 3 * * *" in inspect.stdout          # the cron schedule is registered

        run = subprocess.run([str(BIN / "prefect"), "deployment", "run", "dept_pipeline/smoke",
                              "--watch", "--watch-timeout", "400"], env=prefect_api,
                             capture_output=True, text=True, timeout=450)
        assert run.returncode == 0 and "Completed" in run.stdout, run.stdout + run.stderr
        summary = json.loads((tmp_path / "results/compare/summary.json").read_text())
        assert set(summary["pretraining"]["variants"]) == {"glob", "trim", "spec", "spec_opt",
                                                           "std"}
    finally:
        os.killpg(serve.pid, signal.SIGINT)
        try:
            serve.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
        log.close()
