"""The Flower backend (dept_core.federation, flower_app/): a real SuperLink and one real
SuperNode per source, from the Flower environment (`make install-flower`; CI installs it, so
these run there), against the in-process backend, on configs/smoke.yaml.

* Parity: every DEPT variant ends with the in-process run's weights (every exported model) and
  history, within fp32 tolerance (measured here: equal, bit for bit).
* Bytes: the training messages' tensors are exactly the ledger's (the paper's Table 1
  accounting), the bytes of the messages' protobufs exceed them by the framing, and the
  SuperLink's own counter agrees with the app's count.
* Faults: a SuperNode killed mid-round stops the run with one line naming the site; started
  again, the run resumes from the last finished round and ends exactly where an uninterrupted
  run ends.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from dept_core import federation
from dept_core.config_io import validate
from dept_core.layout import PREPARED, TOKENIZERS
from dept_core.run import train_variant, write_outputs

if not (federation.flower_venv() / "bin" / "flwr").is_file():
    if os.environ.get("CI"):
        raise RuntimeError("CI must run the Flower tests: `make test` installs .venv-flower")
    pytest.skip("no Flower environment (make install-flower)", allow_module_level=True)

ATOL = 1e-5
SMOKE = Path(__file__).resolve().parent.parent / "configs" / "smoke.yaml"


def _cfg():
    return validate(yaml.safe_load(SMOKE.read_text()))


@pytest.fixture(scope="module")
def smoke_root(tmp_path_factory) -> Path:
    """A project of configs/smoke.yaml with data and tokenizers (no Prefect)."""
    from dept_core import tokenizers as tk
    from dept_core.data import prepare, read_split, write_prepared

    root, cfg = tmp_path_factory.mktemp("smoke"), _cfg()
    write_prepared(prepare(cfg, root), root / PREPARED, set(cfg.data.heldout_sources))
    names = [s.name for s in cfg.data.sources]
    train = {n: read_split(root / PREPARED, n, "train") for n in names}
    val = {n: read_split(root / PREPARED, n, "val") for n in names}
    glob_spec, per_source = tk.plan(cfg, train)
    tk.assemble(cfg, train, val, tk.train_sentencepiece(glob_spec),
                {n: tk.train_sentencepiece(s) for n, s in per_source.items()},
                root / TOKENIZERS)
    return root


def _run(dep, cfg, variant, root, work, timeout=600.0):
    params = work / "params.json"
    params.write_text(cfg.model_dump_json())
    return dep.run({"params": str(params), "variant": variant, "root": str(root),
                    "out": str(work / "out" / variant), "ckpt": str(work / "ckpt" / variant),
                    "state-root": str(work / "sites" / variant), "round-timeout": timeout})


def _models(d: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {p.name: load_file(str(p / "model.safetensors")) for p in sorted(d.iterdir())}


@pytest.fixture(scope="module")
def references(smoke_root, tmp_path_factory):
    """The in-process runs, exported as the pipeline exports them."""
    out = tmp_path_factory.mktemp("inprocess")
    cfg = _cfg()
    refs = {}
    for variant in ("glob", "trim", "spec", "spec_opt"):
        res, _ = train_variant(cfg, variant, smoke_root / PREPARED, smoke_root / TOKENIZERS,
                               None)
        write_outputs(cfg, res, smoke_root / TOKENIZERS, out / variant)
        refs[variant] = (res.metrics, _models(out / variant / "models"))
    return refs


def test_every_variant_on_flower_is_the_inprocess_run(smoke_root, tmp_path, references):
    cfg = _cfg()
    with federation.LocalDeployment(cfg.data.train_sources, tmp_path / "flwr",
                                    tmp_path / "logs") as dep:
        for variant in ("glob", "trim", "spec", "spec_opt"):
            record = _run(dep, cfg, variant, smoke_root, tmp_path)
            assert federation.failure_line(record) is None, record
            ref_metrics, ref_models = references[variant]
            out = tmp_path / "out" / variant
            metrics = json.loads((out / "metrics.json").read_text())
            models = _models(out / "models")
            assert models.keys() == ref_models.keys()
            worst = max((models[m][k] - ref_models[m][k]).abs().max().item()
                        for m in models for k in models[m])
            print(f"{variant}: max |weight difference| {worst:.1e}")
            assert worst <= ATOL
            for r, f in zip(ref_metrics["history"], metrics["history"], strict=True):
                assert r["sources"] == f["sources"] and r["comm"] == f["comm"]
                for k, v in r["train_loss"].items():
                    assert f["train_loss"][k] == pytest.approx(v, rel=1e-6)
            assert metrics["final"]["val_bpb_mean"] == \
                pytest.approx(ref_metrics["final"]["val_bpb_mean"], rel=1e-6)
            assert metrics["embedding_params"] == ref_metrics["embedding_params"]
            # bytes: tensors == the ledger; protobufs = tensors + framing; the SuperLink agrees
            fl = metrics["comm"]["flower"]
            assert fl["train_payload_equals_ledger"] is True
            train = fl["totals"]["train"]
            assert train["down_payload"] == metrics["comm"]["bytes_down_total"]
            assert train["up_payload"] == metrics["comm"]["bytes_up_total"]
            assert 0 < fl["framing_bytes"] < 0.1 * fl["payload_bytes"]
            link = record["network-traffic"]
            up = sum(t["up_wire"] for t in fl["totals"].values())
            down = sum(t["down_wire"] for t in fl["totals"].values())
            assert abs(link["inbound-bytes"] - up) < 0.05 * up, (link, up)
            assert abs(link["outbound-bytes"] - down) < 0.05 * down, (link, down)
            if variant.startswith("spec"):  # the server never saw a bank: body only
                assert "bank" not in json.dumps(metrics["comm"]["per_round"])
                assert "global" not in models


def test_a_site_killed_mid_round_stops_the_run_in_one_line_and_it_resumes_exactly(
        smoke_root, tmp_path, references):
    cfg = _cfg()
    server_ckpt = tmp_path / "ckpt" / "spec" / "latest.json"

    def kill_after_round_one(dep):
        while not (server_ckpt.is_file() and json.loads(server_ckpt.read_text())["round"] >= 1):
            time.sleep(0.2)
        dep.kill_node("de")

    with federation.LocalDeployment(cfg.data.train_sources, tmp_path / "flwr",
                                    tmp_path / "logs") as dep:
        killer = threading.Thread(target=kill_after_round_one, args=(dep,), daemon=True)
        killer.start()
        record = _run(dep, cfg, "spec", smoke_root, tmp_path, timeout=45.0)
        killer.join(timeout=5)
        line = federation.failure_line(record)
        assert line is not None and "site 'de'" in line and "round 2" in line, record
        assert "\n" not in line
        assert json.loads(server_ckpt.read_text())["round"] == 1
        dep.start_node("de")
        record = _run(dep, cfg, "spec", smoke_root, tmp_path)
    assert federation.failure_line(record) is None, record
    ref_metrics, ref_models = references["spec"]
    models = _models(tmp_path / "out" / "spec" / "models")
    assert all(torch.equal(models[m][k], ref_models[m][k]) for m in models for k in models[m])
    metrics = json.loads((tmp_path / "out" / "spec" / "metrics.json").read_text())
    strip = [{k: v for k, v in r.items() if k not in ("seconds", "tokens_per_s")}
             for r in metrics["history"]]
    assert strip == [{k: v for k, v in r.items() if k not in ("seconds", "tokens_per_s")}
                     for r in ref_metrics["history"]]
