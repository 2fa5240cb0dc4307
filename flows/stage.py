"""A DVC stage's command: `python -m flows.stage <stage> [args]` runs `python -m flows.<stage>`.

When `DEPT_WARM_SOCKET` names a live warm runner (`flows/warm.py`, started next to the shared
Prefect server by scripts/with_prefect_server.sh, i.e. `make demo`), the stage runs in a child
forked from that runner, which imported torch, transformers, Prefect and MLflow once for the
whole `dvc repro`: no ~5 s of imports per stage. The child writes to this process's stdout
and stderr and its exit status is this process's. Anything else (no runner, another working
directory or environment, code changed since the runner started) runs the stage here, as
before. This module imports nothing heavy.
"""

from __future__ import annotations

import json
import os
import runpy
import signal
import socket
import sys

STAGES = ("prepare", "tokenizers", "pretrain", "evaluate", "compare")
# variables a warm runner must share with this process (they are read at import time)
SHARED_ENV = ("PREFECT_API_URL", "PREFECT_HOME", "MLFLOW_TRACKING_URI", "PYTHONPATH",
              "HF_HUB_OFFLINE", "CUDA_VISIBLE_DEVICES")


def request(stage: str, args: list[str]) -> dict:
    return {"stage": stage, "args": args, "cwd": os.getcwd(), "env": dict(os.environ),
            "shared": {k: os.environ.get(k) for k in SHARED_ENV}}


def run_warm(stage: str, args: list[str], path: str) -> int | None:
    """The stage's exit status from the warm runner at `path`, or None if it cannot run it
    there (then nothing has run)."""
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
    except OSError:
        return None
    with sock:
        body = json.dumps(request(stage, args)).encode()
        socket.send_fds(sock, [len(body).to_bytes(8, "big") + body],
                        [sys.stdin.fileno(), sys.stdout.fileno(), sys.stderr.fileno()])
        reply, interrupted = b"", False
        while not reply.endswith(b"\n"):
            try:
                chunk = sock.recv(64)
            except KeyboardInterrupt:
                if interrupted:  # a second Ctrl-C: closing the connection stops it at once
                    return 130
                interrupted = True  # the first: the stage stops at its next step, says where
                sock.sendall(b"I")  # and ends with its own status (130), waited for here
                continue
            if not chunk:
                return None if not reply else 1
            reply += chunk
    answer = json.loads(reply)
    if answer.get("refused"):
        return None
    code = int(answer["status"])
    if code < 0:  # the child died of a signal: so does this process (DVC sees the same)
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in STAGES:
        print(f"usage: python -m flows.stage {{{','.join(STAGES)}}} [args]", file=sys.stderr)
        return 2
    stage, args = argv[0], argv[1:]
    path = os.environ.get("DEPT_WARM_SOCKET")
    if path:
        sys.stdout.flush()
        code = run_warm(stage, args, path)
        if code is not None:
            return code
    sys.argv = [f"flows/{stage}.py", *args]
    try:
        runpy.run_module(f"flows.{stage}", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
