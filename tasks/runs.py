"""MLflow, the run side: one experiment per project, one parent run per pipeline execution,
one child run per variant holding its pre-training curves and its evaluation, one parent per
study; runs a crashed process left RUNNING are closed by the run that continues their work.

`dept run` opens the parent itself. Under `dvc repro` every stage is its own process: the
stages find their parent by the execution id (config digest, data digest, code commit and
DVC experiment name) and the evaluate stage reopens the run its pretrain stage created.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from dept_core.config import Config
from tasks.tracking import (client_and_experiment, data_digest, ended, flatten,
                            forget_status, git_commit, log_dataset, log_params, pending_status)


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
        # FAILED when its own process knew (a full disk kept it from saying so), else KILLED
        client.set_terminated(run.info.run_id, pending_status(run.info.run_id) or "KILLED")
        forget_status(run.info.run_id)
        closed.append(run.info.run_id)
    return closed


@contextmanager
def study_run(root: Path, name: str, key: str, params: dict[str, str]
              ) -> Iterator[tuple[object, str]]:
    """The parent run of a study: one per study definition (tag `dept.study` = `key`), reused
    when the study is invoked again (a killed study continues under the same parent)."""
    client, exp_id = client_and_experiment(root)
    found = client.search_runs([exp_id], f"tags.`dept.study` = '{key}'", max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        run_id = client.create_run(exp_id, run_name=f"study-{name}", tags={
            "dept.study": key, "stage": "study", "git_commit": git_commit(root)}).info.run_id
        log_params(client, run_id, params)
    with ended(client, run_id):
        yield client, run_id


@contextmanager
def mlflow_run(root: Path, cfg: Config, name: str, tags: dict[str, str],
               parent_run_id: str | None = None) -> Iterator[tuple[object, str]]:
    """Start a run (child of `parent_run_id` if given); always end it, FAILED on error.

    A run of the same name, config and data that a crashed process left RUNNING is marked
    KILLED and tagged `dept.continued_by` with this run's id (the new run re-logs the work
    the crashed one had finished: a resumed training re-logs its finished rounds)."""
    client, exp_id = client_and_experiment(root)
    key = run_key_tag(name, cfg, root)
    all_tags = {"git_commit": git_commit(root), "dvc_data_digest": data_digest(root),
                "dept.key": key, "dept.process": _process_id(), **tags}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(exp_id, run_name=name, tags=all_tags)
    run_id = run.info.run_id
    close_crashed_runs(client, exp_id, key, run_id)
    log_params(client, run_id, flatten(cfg.model_dump(mode="json")))
    log_dataset(client, run_id, root)
    with ended(client, run_id):
        yield client, run_id


def _execution_config(cfg: Config) -> dict:
    """The configuration of a whole execution: every stage's config but its training seed
    (each seed's stages run in the same execution)."""
    raw = cfg.model_dump(mode="json")
    raw["train"].pop("seed", None)
    return raw


def config_digest(cfg: Config) -> str:
    return hashlib.sha256(json.dumps(_execution_config(cfg), sort_keys=True).encode()
                          ).hexdigest()[:8]


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
    client, exp_id = client_and_experiment(root)
    commit, data = git_commit(root), data_digest(root)
    h = hashlib.sha256(f"stages|{config_digest(cfg)}|{data}|{commit}|"
                       f"{os.environ.get('DVC_EXP_NAME', '')}".encode())
    key = h.hexdigest()[:16]
    found = client.search_runs([exp_id], f"tags.`dept.execution` = '{key}'", max_results=1,
                               order_by=["attributes.start_time ASC"])
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        run_id = client.create_run(exp_id, run_name=execution_name(cfg), tags={
            "dept.execution": key, "stage": "pipeline", "git_commit": commit,
            "dvc_data_digest": data, **execution_tags(cfg, root)}).info.run_id
        log_params(client, run_id, flatten(_execution_config(cfg)))
    with ended(client, run_id):
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
        client, exp_id = client_and_experiment(root)
        found = client.search_runs(
            [exp_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}' and "
                      f"tags.variant = '{variant}' and tags.seed = '{cfg.train.seed}' and "
                      f"tags.`dept.pretrained` = '1'",
            max_results=1, order_by=["attributes.start_time DESC"])
        if found and not _alive_elsewhere(found[0]):
            run_id = found[0].info.run_id
            client.update_run(run_id, status="RUNNING")
            client.set_tag(run_id, "dept.process", _process_id())
            with ended(client, run_id):
                yield client, run_id, False
            return
    with mlflow_run(root, cfg, variant_run_name(cfg, variant), tags, parent_run_id) as (c, r):
        yield c, r, phase == "evaluate"


def _alive_elsewhere(run) -> bool:
    """A RUNNING run whose process may still be working in it (not ours, not dead)."""
    proc = run.data.tags.get("dept.process", "")
    return run.info.status == "RUNNING" and proc != _process_id() and not _is_dead(proc)
