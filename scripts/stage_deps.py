"""The code each DVC stage runs, found from its entry point's imports, against its `deps`.

    python scripts/stage_deps.py [DVC_YAML [REPO]]   # per stage: code it needs, and any drift

A stage's command is `python -m <module> ...` (or `python -m flows.stage <name> ...`, which
runs flows.<name>); the code it can reach is that module and,
transitively, every project module it imports (anywhere in a file: imports inside functions
count), plus the `__init__.py` of every package on the way. `dvc repro` re-runs a stage only
when one of its `deps` changes, so a reachable file that is not covered by a dep (the file, or
a folder holding it) leaves results silently stale. tests/test_stage_deps.py fails on any
such gap, and on a listed code file the stage cannot reach (a needless re-run).
"""

from __future__ import annotations

import ast
import shlex
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("dept_core", "tasks", "flows")


def module_file(module: str, repo: Path = REPO) -> Path | None:
    """The project file of a dotted module name (None when it is not the project's)."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = repo / Path(*module.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _imports(path: Path, module: str) -> set[str]:
    """Dotted names a file imports (absolute; `from a import b` gives both a and a.b)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def reachable(entry: str, repo: Path = REPO) -> set[Path]:
    """Every project file `python -m entry` can execute (repo-relative paths)."""
    seen: set[Path] = set()
    todo = [entry]
    while todo:
        module = todo.pop()
        parts = module.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__
            path = module_file(".".join(parts[:i]), repo)
            if path is None or path in seen:
                continue
            seen.add(path)
            name = ".".join(parts[:i])
            todo.extend(m for m in _imports(path, name) if m.split(".")[0] in PACKAGES)
    return {p.relative_to(repo) for p in seen}


def stages(dvc_yaml: Path) -> dict[str, dict]:
    """name -> {cmd, deps}; a `foreach` stage is checked once, through its `do` template."""
    raw = yaml.safe_load(Path(dvc_yaml).read_text(encoding="utf-8"))["stages"]
    out = {}
    for name, stage in raw.items():
        body = stage.get("do", stage)
        deps = [d if isinstance(d, str) else next(iter(d)) for d in body.get("deps", [])]
        out[name] = {"cmd": body["cmd"], "deps": deps}
    return out


def entry_modules(cmd: str) -> list[str]:
    """The modules `python -m <module> ...` runs; `python -m flows.stage <name>` (the
    launcher, flows/stage.py) runs flows.<name> too."""
    argv = shlex.split(cmd)
    if "-m" not in argv:
        raise ValueError(f"stage command {cmd!r} is not `python -m <module> ...`")
    i = argv.index("-m")
    module = argv[i + 1]
    if module == "flows.stage":
        return [module, f"flows.{argv[i + 2]}"]
    return [module]


def covered(path: Path, deps: list[str]) -> bool:
    return any(path == Path(d) or Path(d) in path.parents for d in deps)


def drift(dvc_yaml: Path, repo: Path = REPO) -> dict[str, dict[str, list[str]]]:
    """Per stage: code files it reaches but no dep covers (`missing`), and code files listed
    that it never reaches (`unused`)."""
    out = {}
    for name, st in stages(dvc_yaml).items():
        code = set().union(*(reachable(m, repo) for m in entry_modules(st["cmd"])))
        missing = sorted(str(p) for p in code if not covered(p, st["deps"]))
        listed = [Path(d) for d in st["deps"] if d.endswith(".py")]
        unused = sorted(str(p) for p in listed if p not in code)
        out[name] = {"missing": missing, "unused": unused,
                     "needed": sorted(str(p) for p in code)}
    return out


def main(argv: list[str]) -> int:
    dvc_yaml = Path(argv[0]) if argv else REPO / "dvc.yaml"
    repo = Path(argv[1]).resolve() if len(argv) > 1 else REPO
    bad = 0
    for name, d in drift(dvc_yaml, repo).items():
        status = "ok" if not (d["missing"] or d["unused"]) else "DRIFT"
        print(f"{name}: {status}")
        for key in ("missing", "unused"):
            for f in d[key]:
                print(f"  {key}: {f}")
                bad += 1
        if status != "ok":
            print("  needs:\n" + "".join(f"      - {f}\n" for f in d["needed"]), end="")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
