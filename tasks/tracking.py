"""MLflow, the store side: where the store is, one client per process and store, the metrics
queue (batched per round, written by one background thread), how a run ends, and a variant's
pre-training as metrics. Which runs exist and how they nest is `tasks/runs.py`.

The store is `sqlite:///<project>/mlflow.db` unless `MLFLOW_TRACKING_URI` says otherwise
(under `dvc exp run` in a temporary workspace, the project is DVC's root, `DVC_ROOT`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

from dept_core import diskspace, faults
from dept_core.errors import DeptError
from dept_core import layout

EXPERIMENT = "dept"
# MLflow 3's UI opens an experiment of this kind on its runs table (the GenAI kind, which it
# infers for an untagged experiment, opens on traces)
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


def store_root(root: Path) -> Path:
    """Where the project's MLflow store lives: the project, or, for a DVC experiment run in a
    temporary copy of it (`dvc exp run --temp`, the queue), the repository DVC ran from."""
    dvc_root = os.environ.get("DVC_ROOT")
    return Path(dvc_root).resolve() if dvc_root else Path(root).resolve()


def tracking_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{store_root(root)}/mlflow.db"


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


def git_commit(root: Path) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def data_digest(root: Path) -> str:
    """Digest of the prepared data (its manifest holds every split's sha256)."""
    manifest = layout.prepared(root) / "manifest.json"
    return hashlib.sha256(manifest.read_bytes()).hexdigest()[:16] if manifest.is_file() else ""


class MlflowSink:
    """The core's metrics sink: one `log_batch` per call, queued on one background thread so
    the rounds do not wait for the store; every queued batch is written, in order, before the
    run ends (`ended`).

    (Not MLflow's own `synchronous=False`: ending a run that used it waits up to 1 s for
    MLflow's logging thread to wake from its queue poll, once per run — ~11 s of `dept run`
    on the default config, measured with cProfile. This queue's idle thread ends at once.)"""

    def __init__(self, client, run_id: str):
        self.client, self.run_id = client, run_id

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.log_steps([(metrics, step)])

    def log_steps(self, points: list[tuple[dict[str, float], int]]) -> None:
        """Several steps' metrics in as few batches as MLflow allows (curves)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for metrics, step in points
                 for k, v in metrics.items()]
        faults.point("mlflow-log")
        for i in range(0, len(batch), 900):  # MLflow caps a batch at 1000 metrics
            op = _queue().submit(self.client.log_batch, self.run_id, metrics=batch[i:i + 900])
            _PENDING.setdefault(self.run_id, []).append(op)


_PENDING: dict[str, list] = {}  # run id -> queued writes (futures)
_QUEUE = None


def _queue():
    """The one writer thread (started on first use: a process that never logs, such as the
    warm stage runner before it forks, has no thread)."""
    global _QUEUE
    if _QUEUE is None:
        from concurrent.futures import ThreadPoolExecutor

        _QUEUE = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-sink")
    return _QUEUE


def flush(run_id: str) -> None:
    """Wait until every batch queued for `run_id` is in the store (raises its error)."""
    for op in _PENDING.pop(run_id, []):
        op.result()


def pretraining_summary(metrics: dict) -> dict[str, float]:
    """A variant's pre-training headline numbers, named alike for every variant."""
    emb = metrics["memory"]["embedding_bytes"]
    return {"final/val_bpb_mean": metrics["final"]["val_bpb_mean"] or float("nan"),
            "final/comm_bytes_total": metrics["comm"]["bytes_down_total"]
            + metrics["comm"]["bytes_up_total"],
            "final/embedding_params_mean": sum(metrics["embedding_params"].values())
            / max(len(metrics["embedding_params"]), 1),
            "final/embedding_mb_per_source": sum(emb.values()) / max(len(emb), 1) / 1e6,
            "final/body_mb": metrics["memory"]["body_bytes"] / 1e6,
            **_flower_bytes(metrics["comm"].get("flower"))}


def _flower_bytes(flower: dict | None) -> dict[str, float]:
    """The Flower backend's measured bytes, beside the ledger's `final/comm_bytes_total`:
    the training messages' tensors (== the ledger), all messages on the wire, the framing,
    and the SuperLink's own count."""
    if not flower:
        return {}
    train = flower["totals"].get("train", {})
    out = {"flower/train_tensor_bytes": train.get("down_payload", 0) + train.get("up_payload", 0),
           "flower/wire_bytes": flower["wire_bytes"],
           "flower/framing_bytes": flower["framing_bytes"]}
    link = flower.get("superlink_network_traffic")
    if link:
        out["flower/superlink_bytes"] = link["total-bytes"]
    return out


def log_pretraining(sink: MlflowSink, metrics: dict) -> None:
    """Replay a finished pre-training (its metrics.json) into a run: the per-round curves
    exactly as the live run logged them, then the summary (an evaluation that runs in another
    execution than its pre-training still gives its variant a complete run)."""
    from dept_core.metrics import round_metrics

    down = up = 0
    points = []
    for record in metrics["history"]:
        down, up = down + record["comm"]["down"], up + record["comm"]["up"]
        points.append((round_metrics(record, {"bytes_down_total": down, "bytes_up_total": up},
                                     list(metrics["sources"])), record["round"]))
    sink.log_steps([*points, (pretraining_summary(metrics), metrics["rounds"])])


_CLIENTS: dict[str, object] = {}


def _client(uri: str):
    """One MlflowClient per store and process (each new one costs ~0.2 s: the SQLAlchemy
    engine and a schema check of the sqlite store)."""
    from mlflow.tracking import MlflowClient

    if uri not in _CLIENTS:
        _CLIENTS[uri] = MlflowClient(uri)
    return _CLIENTS[uri]


def _store_lock(uri: str):
    """A new SQLite store creates its tables on first use; two processes doing so at once
    fail ("table ... already exists"). Its first use in a process holds a file lock beside
    the database (filelock, as for the project lock)."""
    from contextlib import nullcontext

    from filelock import FileLock

    parts = urlsplit(uri)
    if parts.scheme != "sqlite" or uri in _CLIENTS:
        return nullcontext()
    db = Path(parts.path[1:])  # sqlite:///rel.db -> rel.db, sqlite:////abs.db -> /abs.db
    db.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(f"{db}.lock", is_singleton=True, thread_local=False)


def client_and_experiment(root: Path):
    with _store_lock(tracking_uri(root)):
        return _client_and_experiment(root)


def _client_and_experiment(root: Path):
    client = _client(tracking_uri(root))
    try:
        exp = client.get_experiment_by_name(EXPERIMENT)
        exp_id = exp.experiment_id if exp else client.create_experiment(
            EXPERIMENT, artifact_location=(store_root(root) / "mlartifacts").as_uri(),
            tags={EXPERIMENT_KIND: MODEL_TRAINING})
        if exp and exp.tags.get(EXPERIMENT_KIND) != MODEL_TRAINING:
            client.set_experiment_tag(exp_id, EXPERIMENT_KIND, MODEL_TRAINING)
    except Exception as exc:  # an unreachable/invalid store: say which one
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        uri = tracking_uri(root)
        raise DeptError(f"MLflow tracking URI {redact(uri)!r} is unusable: "
                        f"{first.replace(uri, redact(uri))}") from None
    return client, exp_id


def log_params(client, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    batch = [Param(k, v[:500]) for k, v in params.items()]
    for i in range(0, len(batch), 90):  # MLflow caps a batch at 100 params
        client.log_batch(run_id, params=batch[i:i + 90])


@contextmanager
def ended(client, run_id: str) -> Iterator[None]:
    """The run ends FINISHED, KILLED when interrupted (Ctrl-C, SIGTERM), FAILED on any other
    error (the error goes on)."""
    from dept_core import interrupt

    status = "FAILED"
    try:
        yield
        flush(run_id)
        status = "FINISHED"
    except BaseException as exc:
        if interrupt.is_interrupt(exc):
            status = "KILLED"
        raise
    finally:
        if status != "FINISHED":
            _quiet_flush(run_id)
        try:
            client.set_terminated(run_id, status)
        except Exception:  # noqa: BLE001 (e.g. a full disk: the store cannot write)
            if status == "FINISHED":
                raise
            remember_status(run_id, status)  # the next run of this project sets it


def _pending_dir() -> Path:
    import tempfile

    return Path(tempfile.gettempdir()) / "dept-pending-run-status"


def remember_status(run_id: str, status: str) -> None:
    """A run's end status the store could not take (its disk was full): kept outside the
    project, set by the next run that opens this store (`apply_pending_status`)."""
    try:
        _pending_dir().mkdir(parents=True, exist_ok=True)
        (_pending_dir() / run_id).write_text(status)
    except OSError:
        pass  # then the next run marks it KILLED, as for a process that vanished


def pending_status(run_id: str) -> str | None:
    try:
        return (_pending_dir() / run_id).read_text().strip() or None
    except OSError:
        return None


def forget_status(run_id: str) -> None:
    (_pending_dir() / run_id).unlink(missing_ok=True)


def log_artifact(client, run_id: str, path: Path | str, artifact_path: str | None = None
                 ) -> None:
    """`log_artifact` / `log_artifacts` (a directory) with a full disk reported as
    `DiskFull` naming the copy, and a partial copy in a local artefact store removed."""
    path = Path(path)
    try:
        faults.no_space("mlflow-artifact")
        if path.is_dir():
            client.log_artifacts(run_id, str(path), artifact_path)
        else:
            client.log_artifact(run_id, str(path), artifact_path)
    except Exception as exc:  # noqa: BLE001
        if not diskspace.is_full(exc):
            raise
        dest = _local_artifact(client, run_id, artifact_path, path)
        if dest is not None:
            shutil.rmtree(dest, ignore_errors=True) if dest.is_dir() else \
                dest.unlink(missing_ok=True)
        raise diskspace.DiskFull(dest or path) from exc


def _local_artifact(client, run_id: str, artifact_path: str | None, path: Path
                    ) -> Path | None:
    from urllib.parse import urlsplit
    from urllib.request import url2pathname

    try:
        uri = client.get_run(run_id).info.artifact_uri
    except Exception:  # noqa: BLE001
        return None
    parts = urlsplit(uri)
    if parts.scheme not in ("", "file"):
        return None
    if path.is_dir() and not artifact_path:
        return None  # the whole artefact root: not ours to remove
    base = Path(url2pathname(parts.path)) / (artifact_path or "")
    return base if path.is_dir() else base / path.name


def _quiet_flush(run_id: str) -> None:
    """On failure: write what was queued, without masking the error that ended the run."""
    try:
        flush(run_id)
    except Exception:  # noqa: BLE001
        pass


def log_dataset(client, run_id: str, root: Path) -> None:
    """The prepared data as an MLflow dataset input, its manifest digest as the digest."""
    from mlflow.entities import Dataset, DatasetInput

    digest = data_digest(root)
    if digest:
        ds = Dataset(name="prepared", digest=digest, source_type="local",
                     source=str(layout.prepared(Path(root).resolve())))
        client.log_inputs(run_id, datasets=[DatasetInput(dataset=ds, tags=[])])
