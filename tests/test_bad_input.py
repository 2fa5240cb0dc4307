"""The bad-input matrix: every case through the `dept` CLI (a subprocess), in a copy of a project
whose outputs are complete. Each case must exit non-zero with one `dept: error: ...` line that
names the culprit, print no traceback, and leave every output already written byte-identical.

Also covered elsewhere (not repeated here): unknown key / negative rounds / sources_per_round
via --set, a missing params file and an unknown --variant (tests/test_flows.py); the same
checks in-process (tests/test_config.py, tests/test_data.py).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

HASHED = ("data", "results", "checkpoints", "mlartifacts", "params.yaml")


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every output file (and the set of files: a stray temp file is a change)."""
    out = {}
    for top in HASHED:
        base = root / top
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for p in files:
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def project(reference_run, tmp_path) -> Path:
    root = tmp_path / "p"
    shutil.copytree(reference_run, root, ignore=shutil.ignore_patterns(".prefect"))
    return root


def _params(root: Path) -> dict:
    return yaml.safe_load((root / "params.yaml").read_text())


def _write_params(root: Path, raw: dict) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def _edit(section: str, key: str, value):
    def setup(root: Path) -> None:
        raw = _params(root)
        raw.setdefault(section, {})[key] = value
        _write_params(root, raw)
    return setup


def _text(content: bytes):
    def setup(root: Path) -> None:
        (root / "params.yaml").write_bytes(content)
    return setup


def _files_source(files: dict[str, bytes], pattern: str):
    """Replace the sources by one `kind: files` source reading `pattern`."""
    def setup(root: Path) -> None:
        for name, blob in files.items():
            (root / "texts").mkdir(exist_ok=True)
            (root / "texts" / name).write_bytes(blob)
        raw = _params(root)
        raw["data"]["sources"] = [{"name": "mine", "kind": "files", "paths": [pattern]}]
        raw["tokenizers"]["per_source_vocab_overrides"] = {}
        raw["train"]["sources_per_round"] = 1
        _write_params(root, raw)
    return setup


def _corrupt_checkpoint(root: Path) -> None:
    (ckpt,) = sorted((root / "checkpoints").glob("spec-*"))
    latest = sorted(ckpt.glob("round-*.safetensors"))[-1]
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # truncated


def _swap_tokenizer(root: Path) -> None:
    models = root / "results/pretrain/spec/seed-0/models"
    shutil.copy(root / "data/tokenizers/global/spm.model", models / "en" / "spm.model")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def _unreachable_mlflow(root: Path) -> dict:
    return {"env": {"MLFLOW_TRACKING_URI": f"http://alice:s3cret@127.0.0.1:{_closed_port()}"}}


def _read_only_data(root: Path) -> dict:
    if os.geteuid() == 0 and not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: permissions cannot be enforced")
    (root / "data").chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    if os.geteuid() != 0:
        return {}
    # root ignores file modes unless it drops CAP_DAC_OVERRIDE (then it is like any user)
    return {"prefix": ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]}


def _no_prepared_data(root: Path) -> None:
    shutil.rmtree(root / "data")


TEXT = ("Ein Absatz echten Textes, lang genug, um nach der Bereinigung "
        "als Dokument zu zählen. ").encode() * 3

# id: (setup(root) -> {prefix: [...], env: {...}} or None, dept arguments, expected text)
CASES = {
    "yaml_syntax": (_text(b"seed: 0\ntrain: {rounds: 2\n"), ["prepare"],
                    "params.yaml: not valid YAML (line"),
    "yaml_not_a_mapping": (_text(b"- seed\n- data\n"), ["prepare"],
                           "params.yaml: expected a mapping of sections"),
    "yaml_not_utf8": (_text(b"seed: 0\ndata: \xff\xfe\n"), ["prepare"],
                      "params.yaml: not valid YAML"),
    "unknown_key": (_edit("train", "lr_decay", 0.5), ["train", "--variant", "glob"],
                    "train.lr_decay: unknown key"),
    "wrong_type": (_edit("train", "batch_size", "eight"), ["run"],
                   "train.batch_size: Input should be a valid integer"),
    "negative_rounds": (_edit("train", "rounds", -3), ["run"],
                        "train.rounds: Input should be greater than 0 (got -3)"),
    "sources_per_round_above_sources": (_edit("train", "sources_per_round", 5), ["run"],
                                        "train.sources_per_round: 5 is more than the 3"),
    "balanced_schedule_indivisible": (
        _edit("train", "sources_per_round", 2), ["run"],
        "train.schedule: balanced needs train.rounds × train.sources_per_round (2 × 2) "
        "divisible by the 3 training sources"),
    "test_split_larger_than_the_source": (
        _edit("prepare", "test_bytes", 1_000_000), ["prepare"],
        "source 'en': 0 bytes of training text left after prepare.test_bytes (1000000)"),
    "seq_len_above_model": (_edit("train", "seq_len", 4096), ["train", "--variant", "spec"],
                            "train.seq_len: 4096 exceeds model.max_seq_len 64"),
    "unknown_variant_in_params": (_edit("train", "variants", ["glob", "fedavg"]), ["run"],
                                  "train.variants: unknown variant 'fedavg' (known: glob, "),
    "vocab_override_unknown_source": (
        _edit("tokenizers", "per_source_vocab_overrides", {"xx": 500}), ["tokenizers"],
        "tokenizers.per_source_vocab_overrides: unknown source 'xx'"),
    "vocab_too_large_for_source": (
        _edit("tokenizers", "per_source_vocab_overrides", {"ja": 60000}), ["tokenizers"],
        "tokenizers.per_source_vocab_overrides.ja: 60000 is too large for tokenizer "
        "'spec_opt/ja' (trained on source 'ja')"),
    "source_files_missing": (_files_source({}, "nowhere/*.txt"), ["prepare"],
                             "source 'mine': path 'nowhere/*.txt' matches no file"),
    "source_file_empty": (_files_source({"e.txt": b" \n\n"}, "texts/*.txt"), ["prepare"],
                          "source 'mine': 0 document(s)"),
    "source_file_binary": (_files_source({"a.txt": TEXT, "b.txt": b"\x7fELF\x00\x01" * 40},
                                         "texts/*.txt"), ["prepare"],
                           "b.txt is a binary file, not text"),
    "prepared_data_missing": (_no_prepared_data, ["tokenizers"],
                              "data/prepared/en/train.jsonl: missing — run the prepare stage"),
    "output_dir_unwritable": (_read_only_data, ["prepare"],
                              "data/prepared: Permission denied"),
    "checkpoint_corrupt": (_corrupt_checkpoint, ["train", "--variant", "spec"],
                           "round-000002.safetensors is corrupt or unreadable"),
    "tokenizer_model_mismatch": (_swap_tokenizer, ["evaluate", "--variant", "spec"],
                                 "models/en/spm.model: tokenizer/model mismatch"),
    "mlflow_unreachable": (_unreachable_mlflow, ["train", "--variant", "glob"],
                           "MLflow tracking URI http://***@127.0.0.1:"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, project, cli_env):
    setup, args, expected = CASES[case]
    extra = setup(project) or {}
    before = snapshot(project)
    try:
        proc = subprocess.run(
            [*extra.get("prefix", []), sys.executable, "-m", "flows.cli", *args], cwd=project,
            env={**cli_env, **extra.get("env", {})}, capture_output=True, text=True,
            timeout=600)
    finally:
        if (project / "data").is_dir():
            (project / "data").chmod(0o755)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [ln for ln in lines if "dept: error:" in ln]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr[-2000:]
    assert expected in errors[0], errors[0]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert "s3cret" not in proc.stderr + proc.stdout  # a URI's password is never printed
    assert snapshot(project) == before



# ------------------------------------------------------------------- security hygiene ----
SOURCE_DIRS = ("dept_core", "tasks", "flows", "benchmarks", "scripts")


def _code() -> dict[str, str]:
    repo = Path(__file__).resolve().parent.parent
    return {str(p.relative_to(repo)): p.read_text(encoding="utf-8")
            for d in SOURCE_DIRS for p in (repo / d).rglob("*") if p.suffix in (".py", ".sh")}


def test_nothing_is_unpickled_and_servers_bind_localhost():
    import re

    for name, text in _code().items():
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (name, call)
        assert not re.search(r"\bpickle\.loads?\(|\bjoblib\.load\(", text), name
        assert "0.0.0.0" not in text, name
        for cmd in re.findall(r"(?:prefect\", \"server\"|mlflow\", \"server\"|server start)"
                              r"[^\n]*", text):
            assert "127.0.0.1" in cmd, (name, cmd)
        for host in re.findall(r"--host\"?,? \"?([0-9a-z.:]+)", text):  # uvicorn, mlflow, prefect
            assert host == "127.0.0.1", (name, host)


def test_weights_on_disk_are_safetensors_only(reference_run):
    files = [p for p in (reference_run / "results").rglob("*") if p.is_file()] + \
        [p for p in (reference_run / "checkpoints").rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")]


def test_no_secrets_in_mlflow_params_tags_or_errors(tmp_path, tiny_cfg, monkeypatch):
    """Credentials in the environment or in a tracking URI never reach MLflow or a message."""
    from mlflow.tracking import MlflowClient

    from dept_core.errors import DeptError
    from tasks.runs import mlflow_run
    from tasks.tracking import check_tracking_uri, redact

    secret = "s3cret-Value-42"
    for key in ("MLFLOW_TRACKING_PASSWORD", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN"):
        monkeypatch.setenv(key, secret)
    with mlflow_run(tmp_path, tiny_cfg, "probe", {"variant": "glob"}) as (client, run_id):
        pass
    run = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(run_id)
    logged = " ".join([*run.data.params.values(), *run.data.tags.values(),
                       *run.data.params, *run.data.tags])
    assert secret not in logged and "PASSWORD" not in logged.upper()
    uri = f"https://bob:{secret}@127.0.0.1:{_closed_port()}/mlflow?token={secret}"
    assert secret not in redact(uri) and redact(uri).startswith("https://***@127.0.0.1:")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(DeptError) as err:
        check_tracking_uri(tmp_path)
    assert secret not in str(err.value) and "unreachable" in str(err.value)
