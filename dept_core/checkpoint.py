"""Round checkpoints: tensors in safetensors, everything else in JSON, written atomically.

`<dir>/round-NNNNNN.safetensors` + `<dir>/round-NNNNNN.json`, then `<dir>/latest.json` points
at the newest complete pair. A crash at any moment leaves the previous pair readable.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from dept_core import diskspace, faults
from dept_core.atomic import atomic_file, write_json
from dept_core.errors import DeptError


def _stem(rnd: int) -> str:
    return f"round-{rnd:06d}"


def save(ckpt_dir: Path, rnd: int, tensors: dict[str, Tensor], meta: dict, keep: int) -> None:
    ckpt_dir = Path(ckpt_dir)
    try:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        diskspace.raise_if_full(exc, ckpt_dir)
        raise
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    # what this stage writes: `keep` checkpoints (+ one being written) and the exports
    diskspace.expect((keep + 2) * sum(t.numel() * t.element_size() for t in flat.values()))
    with atomic_file(ckpt_dir / f"{_stem(rnd)}.safetensors", "wb") as fh:
        fh.write(safetensors_bytes(flat))
        faults.no_space("checkpoint")
    faults.point("checkpoint-write")
    write_json(ckpt_dir / f"{_stem(rnd)}.json", meta)
    write_json(ckpt_dir / "latest.json", {"round": rnd})
    for stray in ckpt_dir.glob(".round-*.tmp"):  # left by a process killed mid-write
        stray.unlink(missing_ok=True)
    finished = sorted(ckpt_dir.glob("round-*.json"))
    for old in finished[:-keep]:
        old.unlink(missing_ok=True)
        old.with_suffix(".safetensors").unlink(missing_ok=True)


def load_latest(ckpt_dir: Path) -> tuple[int, dict[str, Tensor], dict] | None:
    """(round, tensors, meta) of the newest finished round, or None when there is none."""
    pointer = Path(ckpt_dir) / "latest.json"
    if not pointer.is_file():
        return None
    current = pointer
    try:
        rnd = int(json.loads(pointer.read_text())["round"])
        current = Path(ckpt_dir) / f"{_stem(rnd)}.json"
        meta = json.loads(current.read_text())
        current = current.with_suffix(".safetensors")
        tensors = load_file(str(current))
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
        # Files are renamed into place only once complete, so this is damage from outside
        # (disk, copy, a hand edit): say which file, and how to start this run afresh.
        reason = (str(exc).strip().splitlines() or [""])[0][:200]
        raise DeptError(
            f"checkpoint file {current} is corrupt or unreadable ({type(exc).__name__}: "
            f"{reason}); to recover, delete {ckpt_dir} and run again (the run restarts "
            f"from round 1)"
        ) from None
    return rnd, tensors, meta


def pack(prefix: str, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {f"{prefix}/{k}": v for k, v in tensors.items()}


def unpack(prefix: str, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + "/")}


def optimizer_to_tensors(state: dict) -> tuple[dict[str, Tensor], list]:
    """torch optimizer state_dict → flat tensors + the JSON-able param_groups."""
    flat = {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            flat[f"{idx}/{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return flat, state["param_groups"]


def optimizer_from_tensors(flat: dict[str, Tensor], groups: list) -> dict:
    state: dict = {}
    for key, value in flat.items():
        idx, name = key.split("/", 1)  # a parameter's index, or its name (FSDP2's full state)
        state.setdefault(int(idx) if idx.isdigit() else idx, {})[name] = value
    return {"state": state, "param_groups": groups}
