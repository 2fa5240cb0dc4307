"""MLflow: one experiment per study, a run per variant, metrics batched once per round.

The store is `sqlite:///<project>/mlflow.db` unless `MLFLOW_TRACKING_URI` says otherwise.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

from dept_core import faults
from dept_core.config import Config
from dept_core.errors import DeptError
from dept_core.layout import PREPARED

EXPERIMENT = "dept"


def tracking_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(root).resolve()}/mlflow.db"


def redact(uri: str) -> str:
    """The URI as it may appear in logs and errors: no user:password@, no query string."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc and not parts.query:
        return uri  # (urlunsplit would turn sqlite://// into sqlite://)
    netloc = parts.netloc.rpartition("@")[2]
    if "@" in parts.netloc:
        netloc = "***@" + netloc
    return urlunsplit((parts.scheme, netloc, parts.path, "***" if parts.query else "", ""))


def check_tracking_uri(root: Path, timeout: float = 5.0) -> None:
    """Fail fast (before any work) when an http(s) tracking server cannot be reached.

    MLflow itself would retry with back-off for minutes, then fail after training.
    """
    uri = tracking_uri(root)
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "localhost", port), timeout).close()
    except OSError as exc:
        raise DeptError(f"MLflow tracking URI {redact(uri)} is unreachable "
                        f"({exc.strerror or exc}); start the tracking server, or fix or unset "
                        f"MLFLOW_TRACKING_URI (default: the project's mlflow.db)") from None


def flatten(obj, prefix: str = "") -> dict[str, str]:
    """{'train': {'lr': 0.1}} -> {'train.lr': '0.1'} (lists of sources are summarised)."""
    out: dict[str, str] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(obj, list) and obj and isinstance(obj[0], dict):
        out[prefix.rstrip(".")] = ",".join(str(x.get("name", "?")) for x in obj)
    else:
        out[prefix.rstrip(".")] = str(obj)[:500]
    return out


def _git_commit(root: Path) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def data_digest(root: Path) -> str:
    """Digest of the prepared data (its manifest holds every split's sha256)."""
    manifest = Path(root) / PREPARED / "manifest.json"
    return hashlib.sha256(manifest.read_bytes()).hexdigest()[:16] if manifest.is_file() else ""


class MlflowSink:
    """The core's metrics sink: one `log_batch` per round (~0.1 ms per metric on sqlite)."""

    def __init__(self, client, run_id: str):
        self.client, self.run_id = client, run_id

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        faults.point("mlflow-log")
        for i in range(0, len(batch), 900):  # MLflow caps a batch at 1000 metrics
            self.client.log_batch(self.run_id, metrics=batch[i:i + 900])


@contextmanager
def mlflow_run(root: Path, cfg: Config, name: str, tags: dict[str, str],
               parent_run_id: str | None = None) -> Iterator[tuple[object, str]]:
    """Start a run (child of `parent_run_id` if given); always end it, FAILED on error."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri(root))
    try:
        exp = client.get_experiment_by_name(EXPERIMENT)
        exp_id = exp.experiment_id if exp else client.create_experiment(
            EXPERIMENT, artifact_location=(Path(root).resolve() / "mlartifacts").as_uri())
    except Exception as exc:  # an unreachable/invalid store: say which one
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        uri = tracking_uri(root)
        raise DeptError(f"MLflow tracking URI {redact(uri)!r} is unusable: "
                        f"{first.replace(uri, redact(uri))}") from None
    all_tags = {"git_commit": _git_commit(root), "dvc_data_digest": data_digest(root), **tags}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(exp_id, run_name=name, tags=all_tags)
    run_id = run.info.run_id
    from mlflow.entities import Param

    params = [Param(k, v) for k, v in flatten(cfg.model_dump(mode="json")).items()]
    for i in range(0, len(params), 90):
        client.log_batch(run_id, params=params[i:i + 90])
    _log_dataset(client, run_id, root)
    status = "FAILED"
    try:
        yield client, run_id
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status)


def _log_dataset(client, run_id: str, root: Path) -> None:
    """The prepared data as an MLflow dataset input, its manifest digest as the digest."""
    from mlflow.entities import Dataset, DatasetInput

    digest = data_digest(root)
    if digest:
        ds = Dataset(name="prepared", digest=digest, source_type="local",
                     source=str(Path(root).resolve() / PREPARED))
        client.log_inputs(run_id, datasets=[DatasetInput(dataset=ds, tags=[])])
