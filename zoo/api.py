"""The public API: list, create, load and describe models."""

from pathlib import Path
from typing import Any

import torch

from zoo.checkpoint import WEIGHTS_NAME, load_checkpoint, refuse_pickle
from zoo.errors import CheckpointError, UnknownNameError
from zoo.model import Autoencoder
from zoo.plugins import get_host
from zoo.registry import suggest
from zoo.resolve import resolve_pretrained

HUB_PREFIX = "hf://"


def list_architectures() -> list[str]:
    """Names of every architecture the loaded plugins provide."""
    return sorted(get_host().registry.architectures)


def list_models(pattern: str | None = None) -> list[str]:
    """Pretrained model names, optionally filtered by an fnmatch pattern such as ``"*vae*"``."""
    return get_host().registry.list_models(pattern)


def create(architecture: str, preset: str | None = None, **config: Any) -> Autoencoder:
    """A new, untrained model: ``preset`` values (if any) overridden by ``config`` keywords."""
    cls = get_host().registry.architecture(architecture)
    if preset is not None and preset not in cls.presets:
        raise UnknownNameError(f"{architecture!r} has no preset {preset!r}{suggest(preset, cls.presets)}; "
                               f"presets: {', '.join(cls.presets) or 'none'}")
    values = {**cls.presets.get(preset, {}), **config}
    return cls(cls.config_class.from_dict(values))


def load(name_or_path: str | Path, device: str | torch.device | None = None, *, local_files_only: bool = False) -> Autoencoder:
    """Load a model in eval mode from a registered name, a checkpoint folder or ``hf://ORG/NAME[@REVISION]``."""
    directory = checkpoint_folder(name_or_path, local_files_only=local_files_only)
    return load_checkpoint(directory, get_host().registry.architectures, device)


def checkpoint_folder(name_or_path: str | Path, *, local_files_only: bool = False) -> Path:
    """The verified folder holding ``config.json`` and ``model.safetensors`` for anything ``load`` accepts."""
    target = str(name_or_path)
    if target.startswith(HUB_PREFIX):
        from zoo.hub import download_repo

        return download_repo(target[len(HUB_PREFIX):], local_files_only=local_files_only)
    if Path(target).exists():
        return _checkpoint_folder(Path(target))
    return resolve_pretrained(get_host().registry.model(target), local_files_only=local_files_only)


def _checkpoint_folder(path: Path) -> Path:
    if path.is_dir():
        return path
    refuse_pickle(path)
    if path.name != WEIGHTS_NAME:
        raise CheckpointError(f"{path}: pass a checkpoint folder (with config.json and {WEIGHTS_NAME})")
    return path.parent


def info(name: str) -> dict[str, Any]:
    """Describe an architecture or a pretrained model: tasks, config, origin and metadata."""
    registry = get_host().registry
    if name in registry.architectures:
        cls = registry.architectures[name]
        return {
            "kind": "architecture",
            "name": name,
            "tasks": list(cls.tasks),
            "default_config": cls.config_class().to_dict(),
            "presets": dict(cls.presets),
            "plugin": registry.owners[("architecture", name)],
            "description": (cls.__doc__ or "").strip().split("\n\n")[0],
            "pretrained": registry.list_models(f"{name}-*"),
        }
    if name in registry.models:
        entry = registry.models[name]
        cls = registry.architectures[entry.architecture]
        model = cls(cls.config_class.from_dict(entry.config))
        return {
            "kind": "model",
            "name": name,
            "architecture": entry.architecture,
            "tasks": list(cls.tasks),
            "config": entry.config,
            "parameters": sum(p.numel() for p in model.parameters()),
            "sha256": entry.sha256,
            "bundled": str(entry.bundled) if entry.bundled else None,
            "repo_id": entry.repo_id,
            "revision": entry.revision,
            "plugin": registry.owners[("pretrained model", name)],
            "metadata": entry.metadata,
        }
    raise UnknownNameError(f"unknown name {name!r}{suggest(name, [*registry.models, *registry.architectures])}; "
                           "see `zoo list` and `zoo list --architectures`")
