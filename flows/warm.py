"""The warm stage runner: import the stack once, fork one child per DVC stage.

    python -m flows.warm --socket PATH      # scripts/with_prefect_server.sh starts it

Every DVC stage is a process of its own, and each one spent ~5 s importing torch,
transformers, Prefect and MLflow before doing anything (README, "Orchestration overhead").
This process imports them once, then serves `python -m flows.stage <stage>` (flows/stage.py)
over a Unix socket: per request it forks a child that takes the requester's stdin, stdout,
stderr, working directory and environment, runs `flows.<stage>.main(args)` exactly as
`python -m flows.<stage>` would, and reports the exit status back. The child is a fresh copy
of a process that has only imported modules (no threads, no open connections, no flow run),
so it behaves as a new interpreter that has already imported them.

It refuses (the requester then runs the stage itself) when the request comes from another
working directory, when an environment variable read at import time differs
(`flows.stage.SHARED_ENV`), when any project source file changed since the import (the child
would run old code) or when this process has grown a Python thread (fork would copy a lock
held by it). Requests are served one at a time, in order (DVC runs stages one after another).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import select
import signal
import socket
import sys
import time
import traceback
from pathlib import Path

from flows.stage import SHARED_ENV, STAGES

REPO = Path(__file__).resolve().parent.parent


def _sources() -> dict[str, int]:
    """The project's code as imported: file -> mtime."""
    return {str(p): p.stat().st_mtime_ns for pkg in ("dept_core", "tasks", "flows")
            for p in sorted((REPO / pkg).glob("*.py"))}


def _threads() -> int:
    """Python threads of this process. (The idle native helpers some libraries start when
    imported — torch's, jemalloc's background thread — hold no lock a child could need, and
    no parallel region has run here: the children use torch's thread pool normally.)"""
    import threading

    return threading.active_count()


def _recv_request(conn: socket.socket) -> tuple[dict, list[int]]:
    msg, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
    size = int.from_bytes(msg[:8], "big")
    body = msg[8:]
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ConnectionError("request cut short")
        body += chunk
    return json.loads(body), fds


def _why_not(req: dict, cwd: str, shared: dict, sources: dict) -> str | None:
    if req.get("stage") not in STAGES:
        return f"unknown stage {req.get('stage')!r}"
    if req["cwd"] != cwd:
        return f"working directory {req['cwd']} is not {cwd}"
    if req["shared"] != shared:
        return "environment differs"
    if _sources() != sources:
        return "project code changed since import"
    if _threads() != 1:
        return "the runner has threads"
    return None


def _child(req: dict, fds: list[int]) -> None:
    """In the forked child: become the stage process, never return."""
    code = 1
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.environ.clear()
        os.environ.update(req["env"])
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        sys.argv = [f"flows/{req['stage']}.py", *req["args"]]
        module = sys.modules[f"flows.{req['stage']}"]
        try:
            code = module.main(req["args"])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 (the child must report and exit, whatever it was)
        traceback.print_exc()
        code = 1
    finally:
        try:  # exit as a process does (Prefect's log shipping, MLflow's queue, logging
            atexit._run_exitfuncs()  # flush in atexit handlers) without unwinding into
            sys.stdout.flush()       # the runner's own loop
            sys.stderr.flush()
        finally:
            os._exit(code if isinstance(code, int) else 1)


def _serve_one(conn: socket.socket, cwd: str, shared: dict, sources: dict) -> None:
    req, fds = _recv_request(conn)
    why = _why_not(req, cwd, shared, sources)
    if why:
        for fd in fds:
            os.close(fd)
        conn.sendall(json.dumps({"refused": why}).encode() + b"\n")
        print(f"refused {req.get('stage')}: {why}", file=sys.stderr, flush=True)
        return
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        conn.close()
        _child(req, fds)
    for fd in fds:
        os.close(fd)
    gone_at, watching = None, True
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        ready, _, _ = select.select([conn] if watching else [], [], [], 0.05)
        if ready:
            byte = conn.recv(1)
            if byte:  # the requester was interrupted: so is the stage (which then says where)
                os.kill(pid, signal.SIGINT)
            else:     # the requester went away (interrupted twice, or killed): stop now
                os.kill(pid, signal.SIGINT)
                os.kill(pid, signal.SIGINT)
                gone_at, watching = time.monotonic(), False
        if gone_at is not None and time.monotonic() - gone_at > 30:
            os.kill(pid, signal.SIGKILL)
    code = os.waitstatus_to_exitcode(status)
    print(f"{' '.join([req['stage'], *req['args']])}: exit {code}", file=sys.stderr, flush=True)
    try:
        conn.sendall(json.dumps({"status": code}).encode() + b"\n")
    except OSError:
        pass


def serve(path: str) -> None:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if os.path.exists(path):
        os.unlink(path)
    srv.bind(path)  # listening before the imports: early requests wait, none runs cold
    srv.listen(16)
    t = time.monotonic()
    # what the stages import lazily (measured with cProfile in a stage child: the MLflow
    # sqlite store's ~1.1 s of SQLAlchemy and Alembic per stage, pyplot for the plots)
    import mlflow.entities  # noqa: F401
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    import mlflow.tracking  # noqa: F401
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401

    for stage in STAGES:
        __import__(f"flows.{stage}")
    print(f"warm runner ready at {path} in {time.monotonic() - t:.1f} s", file=sys.stderr,
          flush=True)
    cwd, sources = os.getcwd(), _sources()
    shared = {k: os.environ.get(k) for k in SHARED_ENV}
    try:
        while True:
            conn, _ = srv.accept()
            with conn:
                try:
                    _serve_one(conn, cwd, shared, sources)
                except (OSError, ValueError, ConnectionError) as exc:
                    print(f"request failed: {exc}", file=sys.stderr, flush=True)
    finally:
        srv.close()
        if os.path.exists(path):
            os.unlink(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.warm", description=__doc__.splitlines()[0])
    ap.add_argument("--socket", required=True, help="Unix socket path to listen on")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    serve(args.socket)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
