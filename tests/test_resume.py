"""kill -9 in the middle of a run, then the same command again: the same final result."""

import json
import os
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from dept_core.config_io import validate
from dept_core.layout import PREPARED, TOKENIZERS
from dept_core.run import train_variant

RUNNER = """
import json, sys
from pathlib import Path
from safetensors.torch import save_file
from dept_core.config_io import validate
from dept_core.run import train_variant
root, variant, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
cfg = validate(json.loads(Path(sys.argv[4]).read_text()))
res, _ = train_variant(cfg, variant, root / "data/prepared", root / "data/tokenizers", out / "ck")
save_file({**{"body/" + k: v for k, v in res.body.items()},
           **{f"bank/{s}/{c}": t for s, b in res.banks.items() for c, t in b.items()}},
          str(out / "final.safetensors"))
(out / "history.json").write_text(json.dumps(res.metrics["history"]))
"""


def _strip(history):
    return [{k: v for k, v in r.items() if k not in ("seconds", "tokens_per_s")}
            for r in history]


def _start(root, variant, out, cfg_path):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    return subprocess.Popen([sys.executable, "-c", RUNNER, str(root), variant, str(out),
                             str(cfg_path)], env=env)


def test_kill_minus_9_then_resume_equals_uninterrupted(tokenized_root, tiny_raw, tmp_path):
    raw = json.loads(json.dumps(tiny_raw))
    raw["train"].update(rounds=8, local_steps=10, batch_size=8, sources_per_round=2,
                        inner_state="keep")  # optimiser state must survive too
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(raw))
    out = tmp_path / "run"
    proc = _start(tokenized_root, "spec", out, cfg_path)
    latest, deadline = out / "ck" / "latest.json", time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if latest.is_file() and json.loads(latest.read_text())["round"] >= 2:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(latest.read_text())["round"]
    assert 2 <= killed_at < 8 and not (out / "final.safetensors").exists()

    assert _start(tokenized_root, "spec", out, cfg_path).wait(timeout=300) == 0
    resumed = load_file(str(out / "final.safetensors"))

    ref, _ = train_variant(validate(raw), "spec", tokenized_root / PREPARED,
                           tokenized_root / TOKENIZERS, None)
    assert _strip(json.loads((out / "history.json").read_text())) == \
        _strip(json.loads(json.dumps(ref.metrics["history"])))
    for k, v in ref.body.items():
        assert torch.equal(resumed[f"body/{k}"], v), k
    for s, bank in ref.banks.items():
        for c, t in bank.items():
            assert torch.equal(resumed[f"bank/{s}/{c}"], t), (s, c)
