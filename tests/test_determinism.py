"""The same command on the same machine gives bit-identical evaluation metrics (downstream
included): `dept evaluate --variant std` twice, as a user runs it."""

from __future__ import annotations

import shutil

from tests.conftest import dept_cli


def test_dept_evaluate_twice_gives_an_identical_metrics_json(reference_run, tmp_path, cli_env):
    root = tmp_path / "project"
    shutil.copytree(reference_run, root, symlinks=True)
    proc = dept_cli(["train", "--variant", "std"], root, cli_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = root / "results/evaluate/std/seed-0/metrics.json"
    runs = []
    for _ in range(2):
        proc = dept_cli(["evaluate", "--variant", "std"], root, cli_env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs.append(path.read_bytes())
    assert runs[0] == runs[1]
    assert b'"downstream"' in runs[0] and b'"probe"' in runs[0] and b'"zero_shot"' in runs[0]
    assert (path.parent / "timings.json").is_file()   # wall times live apart


def test_dept_train_twice_gives_an_identical_metrics_json(reference_run, tmp_path, cli_env):
    """Pre-training too: the rounds' wall times go to timings.json, so metrics.json (and the
    hash DVC records for it in dvc.lock) is the same on every run of the same command."""
    import json

    from dept_core.metrics import join_timings

    root = tmp_path / "project"
    shutil.copytree(reference_run, root, symlinks=True,
                    ignore=shutil.ignore_patterns("checkpoints"))
    path = root / "results/pretrain/spec/seed-0/metrics.json"
    before = path.read_bytes()
    shutil.rmtree(path.parent)
    proc = dept_cli(["train", "--variant", "spec"], root, cli_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert path.read_bytes() == before
    metrics = json.loads(before)
    assert all("seconds" not in r and "tokens_per_s" not in r for r in metrics["history"])
    timings = json.loads((path.parent / "timings.json").read_text())
    joined = join_timings(metrics, timings)
    assert [r["round"] for r in timings["rounds"]] == [r["round"] for r in metrics["history"]]
    assert all(r["tokens_per_s"] > 0 and r["seconds"] > 0 for r in joined["history"])
