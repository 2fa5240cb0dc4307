"""Tasks of the prepare stage."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from dept_core.config import Config
from dept_core.data import Document, prepare_source, write_prepared
from dept_core import diskspace
from tasks.common import IO_RETRIES, NO_CACHE


@task(name="read-source", task_run_name="read-{src.name}", **IO_RETRIES, **NO_CACHE)
def read_source_task(src, cfg: Config, root: Path) -> dict[str, list[Document]]:
    splits = prepare_source(src, cfg, root)
    get_run_logger().info(
        "%s: %s", src.name, ", ".join(f"{k} {len(v)} docs" for k, v in splits.items())
    )
    return splits


@task(name="write-prepared", **IO_RETRIES, **NO_CACHE)
def write_prepared_task(prepared: dict, out_dir: Path, heldout: list[str]) -> dict:
    # about the text itself (JSON lines add little): what this stage writes
    diskspace.expect(sum(len(d.text.encode("utf-8")) + 64 for splits in prepared.values()
                         for docs in splits.values() for d in docs))
    return write_prepared(prepared, out_dir, set(heldout))
