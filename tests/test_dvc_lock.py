"""The committed dvc.lock matches the committed code and parameters: on a fresh clone
`dvc status` names only missing outputs — no stage whose code, data dependency or parameters
changed since the lock was written (a change to a stage's deps without re-running it fails
here). Generated outputs are DVC's, never git's as well."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DVC = str(Path(sys.executable).parent / "dvc")


def _stale(status: dict) -> list[str]:
    """Every change `dvc status --json` reports that is not an output (or an upstream
    output used as a dependency) missing from a fresh clone."""
    out = []
    for stage, changes in status.items():
        for change in changes:
            if not isinstance(change, dict):
                out.append(f"{stage}: {change}")
                continue
            for kind, items in change.items():
                for path, state in (items.items() if isinstance(items, dict) else []):
                    if isinstance(state, dict):  # a params file: {key: state}
                        out += [f"{stage}: {kind} {path}:{k} {v}" for k, v in state.items()]
                    elif state not in ("deleted", "not in cache"):
                        out.append(f"{stage}: {kind} {path} {state}")
    return out


def test_a_fresh_clone_is_missing_outputs_only(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    proc = subprocess.run([DVC, "status", "--json"], cwd=clone, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    status = json.loads(proc.stdout or "{}")
    assert _stale(status) == [], "dvc.lock is stale: re-run `dvc repro` and commit dvc.lock"
    assert status, "a fresh clone has no outputs: dvc status should list them as missing"


def test_no_generated_output_is_tracked_by_git():
    import yaml

    tracked = set(subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True,
                                 text=True, check=True).stdout.split())
    lock = yaml.safe_load((REPO / "dvc.lock").read_text())
    outs = {o["path"] for st in lock["stages"].values() for o in st.get("outs", [])}
    assert outs, "dvc.lock lists no outputs"
    both = sorted(o for o in outs if o in tracked or any(t.startswith(o + "/") for t in tracked))
    assert both == []
