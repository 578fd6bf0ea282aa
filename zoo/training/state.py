"""Trainer checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is a folder ``checkpoints/step-NNNNNNNN/`` under the run directory holding

- ``model.safetensors`` + ``config.json`` (``save_pretrained``; the folder itself loads with ``zoo.load``),
- ``optimizer.safetensors``: every tensor of the optimizer state (any torch optimizer), keyed by its
  path in ``state_dict()``, e.g. ``state/<param index>/<name>``,
- ``rng.safetensors``: the global CPU (and CUDA) RNG state of every rank, as uint8 tensors,
- ``state.json``: epoch, position in the epoch, step, the rest of the optimizer state (param
  groups, non-tensor state, the optimizer's class), running sums, history and the training config.

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


OPTIMIZER_ENCODING = 2  # 1 (no "encoding" key): flat tensors + scalars, Adam-shaped; 2: any nesting, tagged


def _optimizer_class(optimizer: torch.optim.Optimizer) -> str:
    return f"{type(optimizer).__module__}.{type(optimizer).__qualname__}"


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split any optimizer's ``state_dict()`` into safetensors-able tensors and a JSON-able rest.

    The state dict is walked recursively, so per-parameter state of any shape (Adam's moments,
    SGD's momentum buffers or ``None``, lists of tensors as in LBFGS, tensor learning rates)
    survives. Each tensor is stored under its path, e.g. ``state/0/exp_avg``; in the JSON
    rest it is replaced by ``{"tensor": path}``; tuples and dicts are tagged (``{"tuple": [...]}``,
    ``{"dict": [[key, value], ...]}``) so that they, and integer keys, come back as they were.
    Anything else that JSON cannot hold raises a CheckpointError naming its path.
    """
    tensors: dict[str, torch.Tensor] = {}

    def encode(value: Any, path: tuple[str, ...]) -> Any:
        if isinstance(value, torch.Tensor):
            key = "/".join(path)
            if key in tensors:
                raise CheckpointError(f"optimizer state has two tensors at {key!r}; cannot save it")
            tensors[key] = value.detach().to("cpu").contiguous().clone()
            return {"tensor": key}
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, tuple):
            return {"tuple": [encode(v, (*path, str(i))) for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [encode(v, (*path, str(i))) for i, v in enumerate(value)]
        if isinstance(value, dict):
            return {"dict": [[encode(k, (*path, "key")), encode(v, (*path, str(k)))] for k, v in value.items()]}
        raise CheckpointError(f"optimizer state entry {'/'.join(path)!r} is a {type(value).__name__}; only tensors, "
                              "numbers, strings, None, lists, tuples and dicts can be saved without pickle")

    encoded = encode(optimizer.state_dict(), ())
    return tensors, {"encoding": OPTIMIZER_ENCODING, "class": _optimizer_class(optimizer), "state_dict": encoded}


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    """Rebuild an optimizer ``state_dict`` from :func:`optimizer_to_tensors`' two halves."""
    if "encoding" not in rest:
        return _legacy_optimizer_from_tensors(tensors, rest)
    if rest["encoding"] != OPTIMIZER_ENCODING:
        raise CheckpointError(f"optimizer state has encoding {rest['encoding']!r}, expected {OPTIMIZER_ENCODING}")

    def decode(value: Any) -> Any:
        if isinstance(value, list):
            return [decode(v) for v in value]
        if isinstance(value, dict):
            (tag, inner), = value.items()
            if tag == "tensor":
                if inner not in tensors:
                    raise CheckpointError(f"optimizer state names tensor {inner!r}, which {OPTIMIZER} lacks")
                return tensors[inner]
            if tag == "tuple":
                return tuple(decode(v) for v in inner)
            return {decode(k): decode(v) for k, v in inner}
        return value

    return decode(rest["state_dict"])


def saved_optimizer_class(rest: dict[str, Any]) -> str | None:
    """``module.QualName`` of the optimizer a checkpoint holds (None for checkpoints that predate recording it)."""
    return rest.get("class")


def _legacy_optimizer_from_tensors(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    """Encoding 1: ``state/<index>/<name>`` tensors, ``scalar_state`` and Adam's ``betas`` as a list."""
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
