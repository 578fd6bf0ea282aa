"""Trainer checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is a folder ``checkpoints/step-NNNNNNNN/`` under the run directory holding

- ``model.safetensors`` + ``config.json`` (``save_pretrained``; the folder itself loads with ``zoo.load``),
- ``optimizer.safetensors``: every tensor of the optimizer state, keyed ``state/<param index>/<name>``,
- ``rng.safetensors``: the global CPU (and CUDA) RNG state of every rank, as uint8 tensors,
- ``state.json``: epoch, position in the epoch, step, optimizer param groups and scalar state,
  running sums, history and the training config.

It is written completely, then committed by atomically replacing ``checkpoint.json`` in the run
directory, which names the current folder; older folders are removed only after that. A crash at
any moment therefore leaves the previous checkpoint (or the new one) intact, never a mixture.
``torch.load`` is never used: nothing here unpickles.
"""

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from zoo.checkpoint import CONFIG_NAME, WEIGHTS_NAME, atomic_write, sha256_file
from zoo.errors import CheckpointError

STATE_FORMAT = 1
POINTER = "checkpoint.json"
CHECKPOINTS = "checkpoints"
STATE = "state.json"
OPTIMIZER = "optimizer.safetensors"
RNG = "rng.safetensors"


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into safetensors-able tensors and a JSON-able rest."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state/{index}/{key}"] = value.detach().to("cpu").contiguous().clone()
            else:
                scalars.setdefault(str(index), {})[key] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items()} for group in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalar_state": scalars}


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    """Rebuild an optimizer ``state_dict`` from :func:`optimizer_to_tensors`' two halves."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, index, key = name.split("/", 2)
        state.setdefault(int(index), {})[key] = value
    for index, entry in rest["scalar_state"].items():
        state.setdefault(int(index), {}).update(entry)
    groups = []
    for group in rest["param_groups"]:
        group = dict(group)
        if "betas" in group and isinstance(group["betas"], list):
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


def write_checkpoint(run_dir: Path, name: str, model, optimizer_tensors: dict[str, torch.Tensor],
                     rng_tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> Path:
    """Write a complete checkpoint folder, commit it via ``checkpoint.json``, drop older ones."""
    run_dir = Path(run_dir)
    root = run_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final, suffix = root / name, 1
    while final.exists():  # never overwrite a folder that checkpoint.json may point at
        suffix += 1
        final = root / f"{name}-{suffix}"
    name = final.name
    staging = root / f".{name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    save_file(optimizer_tensors, str(staging / OPTIMIZER))
    save_file(rng_tensors, str(staging / RNG))
    (staging / STATE).write_text(json.dumps({"format": STATE_FORMAT, **state}, indent=1) + "\n")
    staging.rename(final)
    pointer = {"format": STATE_FORMAT, "path": f"{CHECKPOINTS}/{name}", "epoch": state["epoch"],
               "batch_in_epoch": state["batch_in_epoch"], "global_step": state["global_step"],
               "sha256": {f: sha256_file(final / f) for f in (WEIGHTS_NAME, CONFIG_NAME, OPTIMIZER, RNG, STATE)}}
    text = json.dumps(pointer, indent=2) + "\n"
    atomic_write(run_dir / POINTER, lambda tmp: tmp.write_text(text))
    for old in root.iterdir():
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
    return final


def current_checkpoint(run_dir: Path) -> Path | None:
    """The committed checkpoint folder of a run, or None when the run has none."""
    pointer = Path(run_dir) / POINTER
    if not pointer.is_file():
        return None
    data = json.loads(pointer.read_text())
    return Path(run_dir) / data["path"]


def read_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(folder, state, optimizer tensors, rng tensors) of the committed checkpoint, sha256-verified."""
    run_dir = Path(run_dir)
    pointer_path = run_dir / POINTER
    if not pointer_path.is_file():
        raise CheckpointError(f"{run_dir} has no {POINTER}: there is no checkpoint to resume from")
    pointer = json.loads(pointer_path.read_text())
    folder = run_dir / pointer["path"]
    for file_name, expected in pointer["sha256"].items():
        path = folder / file_name
        if not path.is_file() or sha256_file(path) != expected:
            raise CheckpointError(f"{path} is missing or does not match the sha256 in {pointer_path}; "
                                  "the checkpoint is damaged")
    state = json.loads((folder / STATE).read_text())
    if state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{folder / STATE} has format {state.get('format')!r}, expected {STATE_FORMAT}")
    return folder, state, load_file(str(folder / OPTIMIZER)), load_file(str(folder / RNG))
