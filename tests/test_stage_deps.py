"""Each DVC stage's `deps` cover exactly the code its entry point can import (no stale results
under `dvc repro`); the checker itself catches a missing dependency."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("stage_deps", REPO / "scripts/stage_deps.py")
stage_deps = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stage_deps)


def test_every_stage_depends_on_exactly_the_code_it_reaches():
    drift = stage_deps.drift(REPO / "dvc.yaml")
    problems = {name: {k: d[k] for k in ("missing", "unused") if d[k]}
                for name, d in drift.items() if d["missing"] or d["unused"]}
    assert problems == {}, ("dvc.yaml deps drifted from the imports; "
                            "`python scripts/stage_deps.py` lists what each stage needs")


def test_the_checker_catches_a_module_missing_from_a_stage(tmp_path):
    """The `reference` stage as it was before the dependency lists were derived: it ran the
    model, the inner loop and the batch code without depending on them."""
    raw = yaml.safe_load((REPO / "dvc.yaml").read_text())
    stage = raw["stages"]["reference"].get("do", raw["stages"]["reference"])
    stage["deps"] = [d for d in stage["deps"]
                     if d not in ("dept_core/model.py", "dept_core/trainer.py",
                                  "dept_core/batches.py")]
    bad = tmp_path / "dvc.yaml"
    bad.write_text(yaml.safe_dump(raw))
    drift = stage_deps.drift(bad)
    assert drift["reference"]["missing"] == ["dept_core/batches.py", "dept_core/model.py",
                                             "dept_core/trainer.py"]
    assert drift["evaluate"]["missing"] == []


def test_imports_inside_functions_and_package_inits_count(tmp_path):
    (tmp_path / "dept_core").mkdir()
    (tmp_path / "dept_core/__init__.py").write_text("")
    (tmp_path / "dept_core/a.py").write_text("def f():\n    from dept_core import b\n")
    (tmp_path / "dept_core/b.py").write_text("from .c import x\n")
    (tmp_path / "dept_core/c.py").write_text("x = 1\nimport torch\n")
    assert stage_deps.reachable("dept_core.a", tmp_path) == {
        Path("dept_core/__init__.py"), Path("dept_core/a.py"), Path("dept_core/b.py"),
        Path("dept_core/c.py")}
