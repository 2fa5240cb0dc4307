"""params.yaml is strict: every bad key or value is an error that names it."""

from pathlib import Path

import pytest

from dept_core.config_io import load_config, validate
from dept_core.errors import ConfigError
from tests.conftest import write_params


def _raw(tiny_raw, **sections):
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in tiny_raw.items()}
    raw.update(sections)
    return raw


def test_default_params_file_is_valid():
    cfg = load_config("params.yaml")
    assert len(cfg.data.train_sources) >= 6 and len(cfg.data.heldout_sources) >= 2


def test_unknown_top_level_key(tiny_raw):
    with pytest.raises(ConfigError, match=r"trainn: unknown key"):
        validate(_raw(tiny_raw, trainn={}))


def test_unknown_nested_key(tiny_raw):
    raw = _raw(tiny_raw, prepare={"val_bytes": 1000, "val_bytse": 2000})
    with pytest.raises(ConfigError, match=r"prepare\.val_bytse: unknown key"):
        validate(raw)


def test_wrong_type_names_key_and_value(tiny_raw):
    raw = _raw(tiny_raw, tokenizers={"global_vocab_size": "big"})
    with pytest.raises(ConfigError, match=r"tokenizers\.global_vocab_size: .*integer.*'big'"):
        validate(raw)


def test_out_of_range(tiny_raw):
    raw = _raw(tiny_raw, prepare={"val_bytes": -7})
    with pytest.raises(ConfigError, match=r"prepare\.val_bytes: .*greater than 0.*-7"):
        validate(raw)


def test_duplicate_source_names(tiny_raw):
    raw = _raw(tiny_raw)
    raw["data"] = {"sources": raw["data"]["sources"] + [raw["data"]["sources"][0]]}
    with pytest.raises(ConfigError, match="duplicate source name 'en'"):
        validate(raw)


def test_unknown_source_kind_and_missing_key(tiny_raw):
    raw = _raw(tiny_raw)
    raw["data"] = {"sources": [{"name": "x", "kind": "ftp"}]}
    with pytest.raises(ConfigError, match=r"data\.sources\.0.*'ftp'"):
        validate(raw)
    raw["data"] = {"sources": [{"name": "x", "kind": "embedded"}]}
    with pytest.raises(ConfigError, match=r"data\.sources\.0\.preset: required key missing"):
        validate(raw)


def test_override_for_unknown_source_in_vocab_overrides(tiny_raw):
    raw = _raw(tiny_raw, tokenizers={"per_source_vocab_overrides": {"xx": 500}})
    with pytest.raises(ConfigError, match="unknown source 'xx'"):
        validate(raw)


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: 0\ndata:\n  sources: [\n")
    with pytest.raises(ConfigError, match=r"params\.yaml: not valid YAML \(line \d+\)"):
        load_config(path)


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.yaml")


def test_overrides_are_typed_and_checked(tmp_path, tiny_raw):
    path = write_params(tmp_path, tiny_raw)
    cfg = load_config(path, ["prepare.min_doc_chars=7", "tokenizers.model_type=bpe"])
    assert cfg.prepare.min_doc_chars == 7 and cfg.tokenizers.model_type == "bpe"
    with pytest.raises(ConfigError, match=r"prepare\.min_doc_chars: .*integer"):
        load_config(path, ["prepare.min_doc_chars=seven"])
    with pytest.raises(ConfigError, match=r"prepare\.nope: unknown key"):
        load_config(path, ["prepare.nope=1"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(path, ["prepare.min_doc_chars"])


def test_config_imports_go_one_way():
    """dept_core.config_io imports the schema (dept_core.config); the schema never imports
    the reader: in a fresh interpreter, importing config loads no config_io, and either
    module imported first works."""
    import subprocess
    import sys

    code = ("import sys, dept_core.config; assert 'dept_core.config_io' not in sys.modules; "
            "from dept_core.config_io import load_config; "
            "print(load_config('params.yaml').train.rounds)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) > 0
    src = (Path(__file__).resolve().parent.parent / "dept_core/config.py").read_text()
    assert "config_io" not in src.replace("dept_core/config_io.py", "")
