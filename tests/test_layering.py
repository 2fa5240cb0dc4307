"""flows -> tasks -> dept_core, one way; no module reaches into another's private names; each
stage's `python -m flows.<stage>` stands on its own (no detour through the `dept` CLI)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ORCHESTRATION = {"prefect", "mlflow", "dvc"}


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.lineno, node.module, [a.name for a in node.names]))
    return out


def _files(package: str) -> list[Path]:
    return sorted((REPO / package).glob("*.py"))


@pytest.mark.parametrize("package,forbidden", [
    ("dept_core", ORCHESTRATION | {"tasks", "flows"}),
    ("tasks", {"flows"}),
])
def test_layers_import_only_downwards(package, forbidden):
    bad = [f"{p.relative_to(REPO)}:{line} imports {mod}" for p in _files(package)
           for line, mod, _ in _imports(p) if mod.split(".")[0] in forbidden]
    assert bad == []


def test_no_module_imports_another_modules_private_names():
    bad = [f"{p.relative_to(REPO)}:{line} imports {name} from {mod}"
           for pkg in ("dept_core", "tasks", "flows") for p in _files(pkg)
           for line, mod, names in _imports(p) for name in names
           if name.startswith("_") and mod.split(".")[0] in ("dept_core", "tasks", "flows")
           and not (mod == pkg and name == "_env")]
    assert bad == []


def test_tasks_are_defined_in_tasks_only():
    for p in _files("flows"):
        decorators = [d for node in ast.walk(ast.parse(p.read_text()))
                      if isinstance(node, ast.FunctionDef) for d in node.decorator_list]
        names = [d.func.id if isinstance(d, ast.Call) and isinstance(d.func, ast.Name)
                 else getattr(d, "id", "") for d in decorators]
        assert "task" not in names, p.name


@pytest.mark.parametrize("stage", ["prepare", "tokenizers", "pretrain", "evaluate", "compare",
                                   "pipeline"])
def test_each_stage_module_runs_without_the_cli(stage):
    code = (f"import sys, runpy; sys.argv = ['flows.{stage}', '--help']\n"
            f"try:\n    runpy.run_module('flows.{stage}', run_name='__main__')\n"
            f"except SystemExit:\n    pass\n"
            f"print('CLI_LOADED' if 'flows.cli' in sys.modules else 'NO_CLI')")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage: python -m flows." in out.stdout and out.stdout.strip().endswith("NO_CLI")
