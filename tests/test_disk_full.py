"""A full disk at every write site, and on a real small file system.

The DEPT_FAULT_ENOSPC_AT hook (dept_core/faults.py) makes a write raise ENOSPC at a named site
of a finished project's copy; then the command must end non-zero with one line naming the
file (no traceback on the console: it goes to the log file the line names), every output
that existed before intact and no temporary file left. A small tmpfs (skipped where mounting
is not permitted) fills up for real during `dept run`; after space is freed the same command
resumes and ends with the outputs of an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import cli_params, dept_cli, write_params
from tests.test_faults import _outputs, assert_nothing_corrupt

LINE = re.compile(r"^dept: error: no space left on device while writing (\S+) \((.+) free; "
                  r"this stage writes about (.+)\); traceback in (\S+)$")

# site -> (command, the path the error must name, relative to the project)
SITES = {
    "prepared": (["prepare"], "data/prepared"),
    "tokenizers": (["tokenizers"], "data/tokenizers"),
    "models": (["train", "--variant", "glob"], "results/pretrain/glob/seed-0/models"),
    "mlflow-artifact": (["train", "--variant", "glob"], "mlartifacts/"),
    "compare": (["compare"], "results/compare/plots"),
    "checkpoint": (["train", "--variant", "glob", "--set", "train.rounds=4"],
                   "checkpoints/glob-"),
}


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for top in ("data", "results", "checkpoints") for p in sorted((root / top).rglob("*"))
            if p.is_file()}


def _strays(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if p.name.endswith((".tmp", ".old"))]


def _one_line(stderr: str) -> re.Match:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("dept:")]
    assert len(lines) == 1, stderr[-3000:]
    m = LINE.match(lines[0])
    assert m, lines[0]
    return m


@pytest.mark.parametrize("site", list(SITES))
def test_a_full_disk_at_each_write_site_is_one_line_and_loses_nothing(site, tmp_path,
                                                                      reference_run, cli_env):
    from mlflow.tracking import MlflowClient

    root = tmp_path / "p"
    shutil.copytree(reference_run, root, symlinks=True)
    before = _tree(root)
    args, where = SITES[site]
    proc = dept_cli(args, root, {**cli_env, "DEPT_FAULT_ENOSPC_AT": site + (
        "@3" if site == "checkpoint" else "")})
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    m = _one_line(proc.stderr)
    assert str(root.resolve() / where) in m.group(1) or where in m.group(1), m.group(0)
    assert "Traceback" in Path(m.group(4)).read_text()        # the details, outside the project
    assert _strays(root) == []
    after = _tree(root)
    for key, digest in before.items():                         # nothing that existed changed
        assert after.get(key) == digest, key
    assert_nothing_corrupt(root)
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("dept").experiment_id])
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    if site in ("models", "mlflow-artifact", "checkpoint"):
        newest = max((r for r in runs if r.info.run_name == "glob"),
                     key=lambda r: r.info.start_time)
        assert newest.info.status == "FAILED"
    if site == "mlflow-artifact":                                # no partial copy left
        art = Path(newest.info.artifact_uri.removeprefix("file://"))
        assert not (art / "models").exists()
    if site == "checkpoint":                                     # space back: resume, exact
        ckpt = next((root / "checkpoints").glob("glob-*/latest.json"), None)
        keyed = [p for p in (root / "checkpoints").glob("glob-*")
                 if (p / "round-000002.json").exists() and not (p / "round-000003.json").exists()]
        assert ckpt is not None and keyed                     # rounds 1-2 kept, 3 not written
        again = dept_cli(args, root, cli_env)
        assert again.returncode == 0, again.stderr[-3000:]
        ref = tmp_path / "ref"
        shutil.copytree(reference_run, ref, symlinks=True)
        plain = dept_cli(args, ref, cli_env)
        assert plain.returncode == 0, plain.stderr[-3000:]
        for src in ("en", "global"):
            a = root / f"results/pretrain/glob/seed-0/models/{src}/model.safetensors"
            b = ref / f"results/pretrain/glob/seed-0/models/{src}/model.safetensors"
            assert a.read_bytes() == b.read_bytes()


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)],
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        r = None
    if r is None or r.returncode != 0:
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_real_full_disk_then_space_back_resumes_exactly(small_disk, cli_env, reference_run):
    from mlflow.tracking import MlflowClient

    root = small_disk / "p"
    write_params(root, cli_params())
    ballast = small_disk / "ballast"
    free = shutil.disk_usage(small_disk).free
    with open(ballast, "wb") as fh:                  # leave ~6 MB: prepare and tokenizers
        fh.write(b"\0" * (free - 6_000_000))         # fit, pre-training does not
    proc = dept_cli(["run"], root, cli_env)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("dept:")]
    assert len(lines) == 1 and lines[0].startswith(
        "dept: error: no space left on device while writing "), proc.stderr[-3000:]
    assert _strays(root) == []
    assert_nothing_corrupt(root)
    ballast.unlink()                                 # space is back
    final = dept_cli(["run"], root, cli_env)
    assert final.returncode == 0, final.stderr[-3000:]
    got, want = _outputs(root), _outputs(reference_run)
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key] == want[key], key
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("dept").experiment_id])
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
