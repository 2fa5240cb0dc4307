"""A local Flower deployment for DEPT's cross-silo backend (`train.backend: flower`).

One SuperLink and one SuperNode per training source, real processes of the Flower
environment (`make install-flower` → .venv-flower, or $DEPT_FLOWER_VENV), on 127.0.0.1; the
run itself is `flwr run flower_app <connection> --stream`, and its outcome is read back with
`flwr ls --format json` (flwr 1.42's `flwr run` exits 0 even when the ServerApp fails). This
module only starts, watches and stops processes: it imports nothing of Flower, so the main
environment (Prefect, MLflow) can drive it.

The local demo runs `--insecure` (plain HTTP on the loopback interface). Across sites, start
the SuperLink with TLS and SuperNode authentication and each SuperNode with the CA and its
key — the commands are in the README ("Across sites with Flower").

Why processes and not Flower's simulation engine: the point of the backend is the deployment
the paper's authors ran — a SuperLink and one SuperNode per client — with the bytes that
really cross the transport measured.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from dept_core import interrupt
from dept_core.errors import DeptError

REPO = Path(__file__).resolve().parent.parent
APP_DIR = REPO / "flower_app"
CONNECTION = "local"


def flower_venv() -> Path:
    return Path(os.environ.get("DEPT_FLOWER_VENV") or REPO / ".venv-flower")


def check_environment() -> Path:
    """The Flower environment's bin/, or a one-line refusal."""
    bin_dir = flower_venv() / "bin"
    if not (bin_dir / "flwr").is_file():
        raise DeptError(f"train.backend: flower needs the Flower environment at "
                        f"{flower_venv()} (flwr's pins clash with Prefect's): run "
                        f"`make install-flower`, or set DEPT_FLOWER_VENV")
    return bin_dir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))  # a TOML basic string


class LocalDeployment:
    """SuperLink + one SuperNode per source, started on enter and stopped on exit."""

    def __init__(self, sources: list[str], home: Path, logs: Path, threads: int | None = None):
        self.sources, self.home, self.logs = list(sources), Path(home), Path(logs)
        self.bin = check_environment()
        self.procs: dict[str, subprocess.Popen] = {}
        self.port = _free_port()
        self.env = {**os.environ, "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
                    "FLWR_HOME": str(self.home), "FLWR_TELEMETRY_ENABLED": "0",
                    "FLWR_DISABLE_UPDATE_CHECK": "1", "HF_HUB_OFFLINE": "1",
                    "PYTHONPATH": str(REPO)}
        self.env.pop("VIRTUAL_ENV", None)
        if threads:
            self.env["OMP_NUM_THREADS"] = str(threads)

    # --- processes ---------------------------------------------------------------------------
    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")
        # own session: a terminal's Ctrl-C reaches the launcher, which stops these in order
        proc = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs[name] = proc
        return proc

    def __enter__(self) -> "LocalDeployment":
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.port}"\ninsecure = true\n')
        try:
            self._start("superlink", [
                str(self.bin / "flower-superlink"), "--insecure", "--host", "127.0.0.1",
                "--port", str(self.port), "--disable-runtime-dependency-installation"])
            self._wait_port(self.port, "superlink")
            for source in self.sources:
                self.start_node(source)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def start_node(self, source: str) -> None:
        self._start(f"supernode-{source}", [
            str(self.bin / "flower-supernode"), "--insecure",
            "--superlink", f"127.0.0.1:{self.port}", "--host", "127.0.0.1",
            "--port", str(_free_port()), "--node-config", f'source="{source}"'])

    def kill_node(self, source: str) -> None:
        """SIGKILL a site's SuperNode and its children (tests: a site lost mid-round)."""
        proc = self.procs.pop(f"supernode-{source}")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def _wait_port(self, port: int, name: str, timeout: float = 60) -> None:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.procs[name].poll() is not None:
                raise DeptError(f"flower: {name} exited at start (status "
                                f"{self.procs[name].returncode}); see {self.logs / name}.log")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.2)
        raise DeptError(f"flower: {name} did not open port {port} in {timeout:.0f} s")

    def __exit__(self, *exc) -> None:
        """Stop the SuperNodes, then the SuperLink (SIGTERM: they shut down gracefully;
        their helper processes follow their parents), SIGKILL what is left after 20 s."""
        order = [n for n in self.procs if n != "superlink"] + \
            (["superlink"] if "superlink" in self.procs else [])
        for name in order:
            proc = self.procs[name]
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for name in order:
            proc = self.procs[name]
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()

    # --- a run ---------------------------------------------------------------------------------
    def run(self, run_config: dict, on_line: Callable[[str], None] | None = None) -> dict:
        """`flwr run` DEPT's app with `run_config`; its lines go to `on_line`. Returns the
        run's record from `flwr ls` (status, status-details, network-traffic)."""
        overrides = self.home / "run-config.toml"  # (a file: paths may hold spaces)
        overrides.write_text("".join(f"{k} = {_toml_value(v)}\n" for k, v in run_config.items()))
        cmd = [str(self.bin / "flwr"), "run", str(APP_DIR), CONNECTION, "--stream",
               "--run-config", str(overrides)]
        run_id = None
        lines: queue.Queue = queue.Queue()
        with subprocess.Popen(cmd, env=self.env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, bufsize=1,
                              start_new_session=True) as proc:
            reader = threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout],
                                      daemon=True)
            reader.start()
            with open(self.logs / "flwr-run.log", "a") as log:
                while reader.is_alive() or not lines.empty():
                    if interrupt.requested() and run_id is not None:
                        # Ctrl-C / SIGTERM reached this process only (the deployment runs
                        # in sessions of its own): stop the run; the rounds it finished are
                        # checkpointed, and leaving the `with` stops the processes
                        self._flwr("stop", run_id, CONNECTION)
                        proc.terminate()
                        interrupt.check()
                    try:
                        line = lines.get(timeout=0.5)
                    except queue.Empty:
                        continue
                    log.write(line)
                    line = line.rstrip("\n")
                    if run_id is None and "started run" in line.lower():
                        run_id = line.split()[-1].strip("`.")
                    if on_line:
                        on_line(line)
        if run_id is None:
            raise DeptError(f"flower: `flwr run` did not start a run (exit "
                            f"{proc.returncode}); see {self.logs / 'flwr-run.log'}")
        return self.status(run_id)

    def _flwr(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bin / "flwr"), *args], env=self.env,
                              capture_output=True, text=True, timeout=120)

    def status(self, run_id: str) -> dict:
        proc = self._flwr("ls", CONNECTION, "--run-id", run_id, "--format", "json")
        try:
            return json.loads(proc.stdout)["runs"][0]
        except (ValueError, KeyError, IndexError):
            raise DeptError(f"flower: cannot read run {run_id}'s status: "
                            f"{(proc.stdout + proc.stderr).strip()[-300:]}") from None


def failure_line(record: dict) -> str | None:
    """None for a completed run, else the one line that says why it is not."""
    if str(record.get("status", "")).startswith("finished:completed"):
        return None
    details = str(record.get("status-details") or record.get("status"))
    for line in reversed(details.strip().splitlines()):
        if "DeptError" in line or line.startswith("dept") or "flower:" in line:
            return line.split("DeptError:", 1)[-1].strip()
    return f"flower run {record.get('run-id', '?')}: {details.strip().splitlines()[-1][:300]}"
