"""Safetensors checkpoints: ``model.safetensors`` beside a ``config.json``.

Weights are only ever read with safetensors. Pickle-based files are refused,
because unpickling runs arbitrary code from the file. Saving is byte-deterministic:
the same weights, config and metadata give the same files in any process, so a
sha256 pin survives a re-save.
"""

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from zoo.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from zoo.model import Autoencoder

FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt"})
PICKLE_REFUSAL = (
    "is a pickle-based file and will not be loaded: unpickling can run arbitrary code. "
    "ae-zoo loads weights only from model.safetensors"
)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``, so readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def canonical_safetensors(data: bytes) -> bytes:
    """``data`` (a safetensors file) with its JSON header rewritten in a fixed order.

    safetensors keeps ``__metadata__`` in a hash map whose order changes from process to
    process, so two saves of the same weights can differ in their header bytes. Here the
    metadata keys are sorted and ``__metadata__`` comes first; the tensor entries keep
    safetensors' own (deterministic) order and offsets, and the tensor bytes are untouched.
    """
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    metadata = header.pop("__metadata__", None)
    ordered = ({"__metadata__": dict(sorted(metadata.items()))} if metadata else {}) | header
    text = json.dumps(ordered, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors pads the header with spaces to 8-byte alignment
    return len(text).to_bytes(8, "little") + text + data[8 + size:]


def save_checkpoint(model: "Autoencoder", directory: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write the model's weights and config into ``directory`` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in model.state_dict().items()}
    header = {"format": "pt", "architecture": model.architecture, **(metadata or {})}
    weights = canonical_safetensors(save(tensors, metadata=header))
    atomic_write(directory / WEIGHTS_NAME, lambda tmp: tmp.write_bytes(weights))
    config = {"format_version": FORMAT_VERSION, "architecture": model.architecture, "config": model.config.to_dict()}
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    atomic_write(directory / CONFIG_NAME, lambda tmp: tmp.write_text(text))
    return directory


def refuse_pickle(path: Path) -> None:
    """Raise CheckpointError if ``path`` names a pickle-based weights file."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(f"{path} {PICKLE_REFUSAL}")


def _pickle_hint(directory: Path) -> str:
    pickles = sorted(p.name for p in directory.glob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
    return f"; it holds only pickle files ({', '.join(pickles)}), which ae-zoo refuses to load" if pickles else ""


def read_config(directory: Path) -> tuple[str, dict[str, Any]]:
    """(architecture, config dict) from ``directory/config.json``, with errors naming the file."""
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(
            f"{path} is missing: a zoo checkpoint needs {CONFIG_NAME} and {WEIGHTS_NAME}{_pickle_hint(directory)}"
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not {"architecture", "config", "format_version"} <= data.keys():
        raise CheckpointError(f"{path} must hold 'format_version', 'architecture' and 'config'")
    if data["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {data['format_version']!r}; this ae-zoo reads version {FORMAT_VERSION}"
        )
    if not isinstance(data["config"], dict):
        raise CheckpointError(f"{path}: 'config' must be an object")
    return data["architecture"], data["config"]


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file; pickles are refused and corruption is reported with the path."""
    refuse_pickle(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing{_pickle_hint(path.parent)}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is truncated or corrupt and cannot be read as safetensors: {exc}") from None


def load_checkpoint(directory: str | Path, architectures: dict[str, type["Autoencoder"]], device=None) -> "Autoencoder":
    """Rebuild a model from a checkpoint folder, in eval mode, on ``device``."""
    directory = Path(directory)
    architecture, config_dict = read_config(directory)
    if architecture not in architectures:
        from zoo.registry import suggest

        raise CheckpointError(
            f"{directory / CONFIG_NAME} names architecture {architecture!r}, which no loaded plugin provides"
            f"{suggest(architecture, architectures)}. Installed: {', '.join(sorted(architectures)) or 'none'}"
        )
    cls = architectures[architecture]
    try:
        config = cls.config_class.from_dict(config_dict)
    except ConfigError as exc:
        raise CheckpointError(f"{directory / CONFIG_NAME}: {exc}") from None
    model = cls(config)
    tensors = read_weights(directory / WEIGHTS_NAME)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{directory / WEIGHTS_NAME} does not match the config in {directory / CONFIG_NAME}: {' '.join(str(exc).split())}"
        ) from None
    return model.to(device).eval() if device is not None else model.eval()
