"""The torch.distributed backend (dept_core.distributed) against the in-process rounds.

Parity, as measured on this machine (3 tiny rounds, 1 CPU thread per process):
* one rank holding every source: bitwise equal to the in-process run (same arithmetic);
* 2 ranks under torchrun: bitwise equal whenever every rank sums its sources in the order one
  process would (at most one sampled source per rank, or its sources adjacent in S_t);
  otherwise the all_reduce reassociates a float sum — (Δ_en + Δ_ja) + Δ_de instead of
  (Δ_en + Δ_de) + Δ_ja — and the runs drift apart by float rounding, amplified by AdamW:
  ~1e-7 in losses and bits/byte, ~1e-4 in weights after 3 rounds. Tolerances below:
  RTOL_METRIC for losses/bits-per-byte, ATOL_WEIGHT for weights; ledger bytes exactly equal.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dept_core import accel
from dept_core.config_io import validate
from dept_core.layout import PREPARED, TOKENIZERS
from dept_core.run import train_variant
from tests.conftest import linked_project

RTOL_METRIC = 1e-5
ATOL_WEIGHT = 2e-3
SHORT = dict(rounds=3, local_steps=4, batch_size=8, warmup_steps=2)
REPO = Path(__file__).resolve().parent.parent


def _raw(tiny_raw, **train) -> dict:
    raw = json.loads(json.dumps(tiny_raw))
    raw["train"].update(SHORT, **train)
    return raw


def _strip(history):
    return [{k: v for k, v in r.items() if k not in ("seconds", "tokens_per_s")}
            for r in history]


def _inprocess(cfg, root, variant, threads=1):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # the torchrun ranks run with OMP_NUM_THREADS=1
    try:
        res, _ = train_variant(cfg, variant, root / PREPARED, root / TOKENIZERS, None)
    finally:
        torch.set_num_threads(before)
    return res


def _flat(body, banks):
    return {**{f"body/{k}": v for k, v in body.items()},
            **{f"bank/{s}/{c}": t for s, b in banks.items() for c, t in b.items()}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------- pure helpers ----
def test_sources_are_assigned_round_robin_or_in_blocks():
    from dept_core.distributed import assign_sources
    from dept_core.errors import ConfigError

    names = ["a", "b", "c", "d", "e"]
    assert assign_sources(names, 2) == [["a", "c", "e"], ["b", "d"]]
    assert assign_sources(names, 2, "block") == [["a", "b"], ["c", "d", "e"]]
    assert assign_sources(names, 5, "block") == [[n] for n in names]
    with pytest.raises(ConfigError, match="6 ranks for 5 training sources"):
        assign_sources(names, 6)


def test_torchrun_command_single_node_and_multi_node():
    from dept_core.distributed import torchrun_command

    cmd = torchrun_command(Path("p.json"), "spec", Path("/r"), 2)
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert cmd[3:6] == ["--standalone", "--nproc_per_node", "2"]
    assert cmd[6:8] == ["-m", "dept_core.distributed"] and cmd[-1] == "--emit-metrics"
    multi = torchrun_command(Path("p.json"), "spec", Path("/r"), 8,
                             ["--nnodes", "2", "--rdzv_endpoint", "h:29400"])
    assert "--standalone" not in multi and multi[3:5] == ["--nnodes", "2"]


# ------------------------------------------------------ one rank, in this process (fast) ----
@pytest.fixture
def no_cuda_calls(monkeypatch):
    """On a CPU run, any CUDA-only call is a bug: make each of them fail loudly."""
    def boom(*a, **k):
        raise AssertionError("a CUDA-only call on a CPU run")

    for name in ("set_device", "synchronize", "current_device", "get_device_properties"):
        monkeypatch.setattr(torch.cuda, name, boom)
    monkeypatch.setattr(torch.Tensor, "pin_memory", boom)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def world_of_one(monkeypatch, no_cuda_calls):
    import torch.distributed as dist

    for key, value in dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), RANK="0",
                           WORLD_SIZE="1", LOCAL_RANK="0").items():
        monkeypatch.setenv(key, value)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


@pytest.mark.parametrize("variant,family", [("glob", "gpt2"), ("trim", "llama"),
                                            ("spec", "llama")])
def test_one_rank_is_bitwise_the_inprocess_run(tokenized_root, tiny_raw, world_of_one,
                                               variant, family):
    """The distributed code path (Gloo, collectives, gathers, ledger merge) with one rank
    holding every source: the same numbers, bit for bit; and no CUDA call on the way."""
    from dept_core.distributed import init_group, train_distributed

    raw = _raw(tiny_raw, sources_per_round=2, inner_state="keep")
    raw["model"]["family"] = family  # gpt2: the positional table is averaged too
    cfg = validate(raw)
    group, device = init_group(cfg)
    assert device == torch.device("cpu") and group.world_size == 1
    dist_res = train_distributed(cfg, variant, tokenized_root / PREPARED,
                                 tokenized_root / TOKENIZERS, None, group, device)
    ref = _inprocess(cfg, tokenized_root, variant, threads=torch.get_num_threads())
    a, b = _flat(ref.body, ref.banks), _flat(dist_res.body, dist_res.banks)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _strip(ref.metrics["history"]) == _strip(dist_res.metrics["history"])
    assert ref.metrics["comm"]["per_round"] == dist_res.metrics["comm"]["per_round"]
    assert dist_res.metrics["comm"]["collective"]["all_reduce_calls_per_rank"][0] > 0


# ------------------------------------------------------------- two ranks under torchrun ----
def _torchrun(root: Path, cfg_path: Path, variant: str, out: Path, *extra: str,
              nproc: int = 2, env_extra: dict | None = None, check: bool = True):
    """`torchrun --standalone` of dept_core.distributed; (metrics, final weights), or with
    check=False the finished process whatever its status."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
           "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node", str(nproc), "-m", "dept_core.distributed", "--variant", variant,
           "--params", str(cfg_path), "--root", str(root), "--out", str(out), "--no-export",
           "--dump", str(out / "final.safetensors"), *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    if not check:
        return proc
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads((out / "metrics.json").read_text()), load_file(str(out / "final.safetensors"))


def _assert_close(ref, metrics, weights):
    a = _flat(ref.body, ref.banks)
    assert a.keys() == weights.keys()
    worst = max((a[k] - weights[k]).abs().max().item() for k in a)
    assert worst <= ATOL_WEIGHT, worst
    for r, d in zip(ref.metrics["history"], metrics["history"], strict=True):
        assert r["sources"] == d["sources"]
        assert r["comm"] == json.loads(json.dumps(d["comm"]))         # bytes: exactly
        for k, v in r["train_loss"].items():
            assert d["train_loss"][k] == pytest.approx(v, rel=RTOL_METRIC)
        for k, v in r["val"].items():
            assert d["val"][k]["bpb"] == pytest.approx(v["bpb"], rel=RTOL_METRIC)
            assert d["val"][k]["loss"] == pytest.approx(v["loss"], rel=RTOL_METRIC)
    assert metrics["final"]["val_bpb_mean"] == \
        pytest.approx(ref.metrics["final"]["val_bpb_mean"], rel=RTOL_METRIC)
    return worst


@pytest.mark.parametrize("variant,per_round", [("trim", 3), ("spec", 2)])
def test_torchrun_two_ranks_match_the_inprocess_run(tokenized_root, tiny_raw, tmp_path,
                                                    variant, per_round):
    """trim, 3 sources on 2 ranks (en, ja | de), all sampled: the sum is reassociated;
    spec, 2 of 3 sampled per round: SPEC banks stay on their rank until the end."""
    raw = _raw(tiny_raw, sources_per_round=per_round)
    (tmp_path / "cfg.json").write_text(json.dumps(raw))
    metrics, weights = _torchrun(tokenized_root, tmp_path / "cfg.json", variant,
                                 tmp_path / "out", "--no-checkpoints")
    assert metrics["world_size"] == 2 and metrics["assignment"] == [["en", "ja"], ["de"]]
    ref = _inprocess(validate(raw), tokenized_root, variant)
    worst = _assert_close(ref, metrics, weights)
    print(f"{variant}: max |weight difference| {worst:.2e}")


def test_torchrun_resumes_from_the_round_every_rank_finished(tokenized_root, tiny_raw,
                                                             tmp_path):
    """Rank 1 lost its last checkpoint (a crash between the ranks' saves): the relaunch rolls
    rank 0 back to the round both finished and ends with the uninterrupted result."""
    raw = _raw(tiny_raw, sources_per_round=2, inner_state="keep")
    (tmp_path / "cfg.json").write_text(json.dumps(raw))
    root = tmp_path / "proj"
    linked_project(root, tokenized_root)
    full, full_w = _torchrun(root, tmp_path / "cfg.json", "trim", tmp_path / "a")
    (rank1,) = root.glob("checkpoints/trim-*/torchrun-rank1-of-2")
    (rank1 / "round-000003.json").unlink()
    (rank1 / "round-000003.safetensors").unlink()
    (rank1 / "latest.json").write_text(json.dumps({"round": 2}))
    again, again_w = _torchrun(root, tmp_path / "cfg.json", "trim", tmp_path / "b")
    assert all(torch.equal(full_w[k], again_w[k]) for k in full_w)
    assert _strip(full["history"]) == _strip(again["history"])


# ------------------------------------------------------------- the GPU path, on a CPU ----
def test_device_selection():
    from dept_core.errors import ConfigError

    assert accel.pick_device("auto", 3, cuda_available=True) == torch.device("cuda", 3)
    assert accel.pick_device("cuda", 1, cuda_available=True) == torch.device("cuda", 1)
    assert accel.pick_device("auto", None, cuda_available=True) == torch.device("cuda")
    assert accel.pick_device("auto", 3, cuda_available=False) == torch.device("cpu")
    assert accel.pick_device("cpu", 3, cuda_available=True) == torch.device("cpu")
    with pytest.raises(ConfigError, match="train.device: 'cuda', but CUDA is not available"):
        accel.pick_device("cuda", 0, cuda_available=False)
    assert accel.dist_backend(torch.device("cuda", 0)) == "nccl"
    assert accel.dist_backend(torch.device("cpu")) == "gloo"


def test_autocast_is_bf16_on_cuda_and_off_on_cpu():
    from dept_core.trainer import autocast_for

    with pytest.warns(UserWarning) if not torch.cuda.is_available() else nullcontext():
        ctx = autocast_for(torch.device("cuda", 0))  # CPU build: warns, is never entered
    assert isinstance(ctx, torch.autocast)
    assert ctx.device == "cuda" and ctx.fast_dtype == torch.bfloat16
    assert isinstance(autocast_for(torch.device("cpu")), nullcontext)


def test_fused_adamw_only_for_cuda_parameters(monkeypatch, tiny_cfg):
    from dept_core import trainer
    from dept_core.model import build_model

    seen = []
    monkeypatch.setattr(torch.optim, "AdamW", lambda groups, **kw: seen.append(kw))

    class FakeCudaParam:
        requires_grad, device = True, torch.device("cuda", 0)

        def dim(self):
            return 2

    class FakeModel:
        def parameters(self):
            return iter([FakeCudaParam(), FakeCudaParam()])

    trainer.make_optimizer(FakeModel(), tiny_cfg.train)
    trainer.make_optimizer(build_model(tiny_cfg.model, 300, 0), tiny_cfg.train)
    assert seen[0]["fused"] is True and seen[1]["fused"] is None


def test_pinned_batches_only_on_cuda(monkeypatch):
    from dept_core.batches import BatchSampler

    sampler = BatchSampler(torch.arange(100), 8, 2, seed=0)
    assert accel.pin_samplers({"a": sampler}, torch.device("cpu"))["a"] is sampler
    pinned = accel.pin_samplers({"a": sampler}, torch.device("cuda", 0))["a"]
    calls = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: calls.append(1) or self)
    state = pinned.state()
    batch = pinned.next()
    assert calls == [1] and batch.shape == (2, 9)
    pinned.set_state(state)                    # checkpointing goes through to the generator
    assert torch.equal(pinned.next(), batch)


def test_compile_flag_compiles_each_block(monkeypatch, tokenized_root, tiny_raw):
    """train.compile=true: each transformer block goes through torch.compile (dynamo's eager
    backend here, the default inductor on a user's machine) and the run still learns."""
    real = accel.compile_blocks
    counted = []
    monkeypatch.setattr(accel, "compile_blocks",
                        lambda model: counted.append(real(model, backend="eager")))
    cfg = validate(_raw(tiny_raw, rounds=1, local_steps=2, sources_per_round=2, compile=True))
    res, _ = train_variant(cfg, "spec", tokenized_root / PREPARED, tokenized_root / TOKENIZERS,
                           None)
    assert counted == [cfg.model.dims()["n_layers"]]
    # one round of 2 sources: only the trained sources have SPEC embeddings (and a number)
    trained = res.metrics["history"][0]["sources"]
    assert trained and all(res.metrics["final"]["val"][k]["bpb"] > 0 for k in trained)


@pytest.mark.skipif(os.environ.get("DEPT_TEST_INDUCTOR") != "1",
                    reason="inductor compiles C++ for ~35 s on this 2-core machine; "
                           "set DEPT_TEST_INDUCTOR=1 to run it")
def test_inductor_compiled_blocks_match_eager(tiny_cfg):
    from dept_core.model import build_model, lm_loss

    model = build_model(tiny_cfg.model, 300, 0)
    batch = torch.randint(0, 300, (4, 33), generator=torch.Generator().manual_seed(0))
    ref, _ = lm_loss(model, batch)
    accel.compile_blocks(model)
    out, _ = lm_loss(model, batch)
    assert out.item() == pytest.approx(ref.item(), rel=1e-4)


# ------------------------------------------------------------ presets and orchestration ----
@pytest.mark.parametrize("size", ["125m", "350m", "1.3b"])
def test_paper_presets_are_valid_torchrun_gpu_configs(size):
    from dept_core.config_io import load_config

    cfg = load_config(REPO / "configs" / f"paper-{size}.yaml")
    assert cfg.model.size == f"paper-{size}" and cfg.train.backend == "torchrun"
    assert cfg.train.device == "cuda" and cfg.train.seq_len == cfg.model.max_seq_len == 2048
    assert all(s.kind == "hf" and s.streaming for s in cfg.data.sources)
    assert cfg.train.nproc_per_node <= len(cfg.data.train_sources)


@pytest.mark.slow
def test_pretrain_flow_option_trains_through_torchrun(tokenized_root, tiny_raw, tmp_path,
                                                      prefect_server):
    """The Prefect pretrain flow with backend='torchrun': a torchrun subprocess trains, the
    task streams its per-round metrics into MLflow and the stage outputs are the usual ones."""
    from mlflow.tracking import MlflowClient

    from flows.pretrain import pretrain_flow
    from tests.conftest import write_params

    root = tmp_path / "proj"
    write_params(root, _raw(tiny_raw, sources_per_round=2))
    linked_project(root, tokenized_root)
    (root / "results/tokenizers").mkdir(parents=True)
    (root / "results/tokenizers/stats.json").write_bytes(
        (tokenized_root / TOKENIZERS / "stats.json").read_bytes())
    metrics = pretrain_flow(variant="spec", root=str(root), backend="torchrun")
    assert metrics["backend"] == "torchrun" and metrics["world_size"] == 2
    assert {p.name for p in (root / "results/pretrain/spec/seed-0/models").iterdir()} == \
        {"en", "de", "ja"}
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("dept").experiment_id])
    (run,) = [r for r in runs if r.data.tags.get("variant") == "spec"]  # under its execution
    assert run.data.tags["mlflow.parentRunId"] in {r.info.run_id for r in runs}
    assert run.data.params["train.backend"] == "torchrun"
    history = client.get_metric_history(run.info.run_id, "val_bpb_mean")
    # the mean is logged from the first round after which every source has SPEC embeddings
    seen, complete = set(), []
    for h in metrics["history"]:
        seen |= set(h["sources"])
        if seen == {"en", "de", "ja"}:
            complete.append(h["round"])
    assert complete and [m.step for m in history] == complete
    assert history[-1].value == pytest.approx(metrics["final"]["val_bpb_mean"])
