"""MLflow: one experiment per project, one parent run per pipeline execution, one child run
per variant holding its pre-training curves and its evaluation; metrics batched per round.

`dept run` opens the parent itself. Under `dvc repro` every stage is its own process: the
stages find their parent by the execution id (config digest, data digest, code commit and
DVC experiment name) and the evaluate stage reopens the run its pretrain stage created.

The store is `sqlite:///<project>/mlflow.db` unless `MLFLOW_TRACKING_URI` says otherwise
(under `dvc exp run` in a temporary workspace, the project is DVC's root, `DVC_ROOT`).
"""

from __future__ import annotations

import hashlib
import json
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


def _git_commit(root: Path) -> str:
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
    run ends (`_ended`).

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
            "final/body_mb": metrics["memory"]["body_bytes"] / 1e6}


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


def _process_id() -> str:
    """This process as `host:pid:start-time` (the start time tells a reused pid apart)."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"


def _start_time(pid: int) -> str:
    try:  # field 22 of /proc/<pid>/stat: start time in clock ticks since boot (Linux)
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _is_dead(process: str) -> bool:
    """True when `process` (from `_process_id`) ran on this host and is gone."""
    host, _, rest = process.partition(":")
    pid, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's run: it may still be going
    if not Path("/proc").is_dir():
        try:
            os.kill(int(pid), 0)
            return False
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
    return _start_time(int(pid)) != started


def run_key_tag(name: str, cfg: Config, root: Path) -> str:
    """What a run does: its name, config and prepared data. A run with the same key that a
    crash left RUNNING is the one this run continues."""
    h = hashlib.sha256(name.encode())
    h.update(cfg.model_dump_json().encode())
    h.update(data_digest(root).encode())
    return h.hexdigest()[:16]


def close_crashed_runs(client, exp_id: str, key: str, new_run_id: str) -> list[str]:
    """Runs of the same key left RUNNING by a process that died (kill -9, power loss) on this
    host: marked KILLED, tagged with the run that continues their work."""
    closed = []
    for run in client.search_runs([exp_id], f"tags.`dept.key` = '{key}' and "
                                            f"attributes.status = 'RUNNING'"):
        if run.info.run_id == new_run_id or not _is_dead(run.data.tags.get("dept.process", "")):
            continue
        client.set_tag(run.info.run_id, "dept.continued_by", new_run_id)
        client.set_terminated(run.info.run_id, "KILLED")
        closed.append(run.info.run_id)
    return closed


_CLIENTS: dict[str, object] = {}


def _client(uri: str):
    """One MlflowClient per store and process (each new one costs ~0.2 s: the SQLAlchemy
    engine and a schema check of the sqlite store)."""
    from mlflow.tracking import MlflowClient

    if uri not in _CLIENTS:
        _CLIENTS[uri] = MlflowClient(uri)
    return _CLIENTS[uri]


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


@contextmanager
def study_run(root: Path, name: str, key: str, params: dict[str, str]
              ) -> Iterator[tuple[object, str]]:
    """The parent run of a study: one per study definition (tag `dept.study` = `key`), reused
    when the study is invoked again (a killed study continues under the same parent)."""
    client, exp_id = _client_and_experiment(root)
    found = client.search_runs([exp_id], f"tags.`dept.study` = '{key}'", max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        run_id = client.create_run(exp_id, run_name=f"study-{name}", tags={
            "dept.study": key, "stage": "study", "git_commit": _git_commit(root)}).info.run_id
        _log_params(client, run_id, params)
    with _ended(client, run_id):
        yield client, run_id


@contextmanager
def mlflow_run(root: Path, cfg: Config, name: str, tags: dict[str, str],
               parent_run_id: str | None = None) -> Iterator[tuple[object, str]]:
    """Start a run (child of `parent_run_id` if given); always end it, FAILED on error.

    A run of the same name, config and data that a crashed process left RUNNING is marked
    KILLED and tagged `dept.continued_by` with this run's id (the new run re-logs the work
    the crashed one had finished: a resumed training re-logs its finished rounds)."""
    client, exp_id = _client_and_experiment(root)
    key = run_key_tag(name, cfg, root)
    all_tags = {"git_commit": _git_commit(root), "dvc_data_digest": data_digest(root),
                "dept.key": key, "dept.process": _process_id(), **tags}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(exp_id, run_name=name, tags=all_tags)
    run_id = run.info.run_id
    close_crashed_runs(client, exp_id, key, run_id)
    _log_params(client, run_id, flatten(cfg.model_dump(mode="json")))
    _log_dataset(client, run_id, root)
    with _ended(client, run_id):
        yield client, run_id


def config_digest(cfg: Config) -> str:
    """The configuration of a whole execution (every stage's config but its training seed)."""
    raw = cfg.model_dump(mode="json")
    raw["train"].pop("seed", None)
    return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:8]


def execution_tags(cfg: Config, root: Path) -> dict[str, str]:
    """What tells executions apart in the runs table: config digest, DVC experiment name."""
    tags = {"dept.config_digest": config_digest(cfg), "variants": ",".join(cfg.train.variants)}
    if os.environ.get("DVC_EXP_NAME"):
        tags["dept.dvc_exp"] = os.environ["DVC_EXP_NAME"]
    return tags


def execution_name(cfg: Config, prefix: str = "pipeline") -> str:
    exp = os.environ.get("DVC_EXP_NAME")
    return f"{exp or prefix} {config_digest(cfg)}"


@contextmanager
def execution_run(root: Path, cfg: Config) -> Iterator[tuple[object, str]]:
    """The parent run of a pipeline executed stage by stage (`dvc repro`, `dvc exp run`,
    `dept train` then `dept evaluate`): one per (config, prepared data, code commit, DVC
    experiment), found by the tag `dept.execution` by every stage of that execution, RUNNING
    while a stage works in it."""
    client, exp_id = _client_and_experiment(root)
    h = hashlib.sha256(f"stages|{config_digest(cfg)}|{data_digest(root)}|"
                       f"{_git_commit(root)}|{os.environ.get('DVC_EXP_NAME', '')}".encode())
    key = h.hexdigest()[:16]
    found = client.search_runs([exp_id], f"tags.`dept.execution` = '{key}'", max_results=1,
                               order_by=["attributes.start_time ASC"])
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        run_id = client.create_run(exp_id, run_name=execution_name(cfg), tags={
            "dept.execution": key, "stage": "pipeline", "git_commit": _git_commit(root),
            "dvc_data_digest": data_digest(root), **execution_tags(cfg, root)}).info.run_id
        base = cfg.model_dump(mode="json")
        base["train"].pop("seed", None)
        _log_params(client, run_id, flatten(base))
    with _ended(client, run_id):
        yield client, run_id


def variant_run_name(cfg: Config, variant: str) -> str:
    """A variant's run: its name, and its training seed when the execution has several."""
    return variant if len(cfg.train.seeds) <= 1 else f"{variant} seed={cfg.train.seed}"


@contextmanager
def variant_run(root: Path, cfg: Config, variant: str, phase: str, parent_run_id: str | None,
                tags: dict[str, str] | None = None) -> Iterator[tuple[object, str, bool]]:
    """The variant's run under its execution: `phase="pretrain"` creates it; `"evaluate"`
    reopens the newest one of this execution, variant and seed that holds a finished
    pre-training (yields `fresh=False`), or creates it (`fresh=True`: the caller back-fills
    the pre-training curves from metrics.json, so the run is complete either way)."""
    tags = {"variant": variant, "seed": str(cfg.train.seed), **(tags or {})}
    if phase == "evaluate" and parent_run_id:
        client, exp_id = _client_and_experiment(root)
        found = client.search_runs(
            [exp_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}' and "
                      f"tags.variant = '{variant}' and tags.seed = '{cfg.train.seed}' and "
                      f"tags.`dept.pretrained` = '1'",
            max_results=1, order_by=["attributes.start_time DESC"])
        if found and not _alive_elsewhere(found[0]):
            run_id = found[0].info.run_id
            client.update_run(run_id, status="RUNNING")
            client.set_tag(run_id, "dept.process", _process_id())
            with _ended(client, run_id):
                yield client, run_id, False
            return
    with mlflow_run(root, cfg, variant_run_name(cfg, variant), tags, parent_run_id) as (c, r):
        yield c, r, phase == "evaluate"


def _alive_elsewhere(run) -> bool:
    """A RUNNING run whose process may still be working in it (not ours, not dead)."""
    proc = run.data.tags.get("dept.process", "")
    return run.info.status == "RUNNING" and proc != _process_id() and not _is_dead(proc)


def _log_params(client, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    batch = [Param(k, v[:500]) for k, v in params.items()]
    for i in range(0, len(batch), 90):  # MLflow caps a batch at 100 params
        client.log_batch(run_id, params=batch[i:i + 90])


@contextmanager
def _ended(client, run_id: str) -> Iterator[None]:
    """The run ends FINISHED, or FAILED on any error (the error goes on)."""
    status = "FAILED"
    try:
        yield
        flush(run_id)
        status = "FINISHED"
    finally:
        if status == "FAILED":
            _quiet_flush(run_id)
        client.set_terminated(run_id, status)


def _quiet_flush(run_id: str) -> None:
    """On failure: write what was queued, without masking the error that ended the run."""
    try:
        flush(run_id)
    except Exception:  # noqa: BLE001
        pass


def _log_dataset(client, run_id: str, root: Path) -> None:
    """The prepared data as an MLflow dataset input, its manifest digest as the digest."""
    from mlflow.entities import Dataset, DatasetInput

    digest = data_digest(root)
    if digest:
        ds = Dataset(name="prepared", digest=digest, source_type="local",
                     source=str(layout.prepared(Path(root).resolve())))
        client.log_inputs(run_id, datasets=[DatasetInput(dataset=ds, tags=[])])
