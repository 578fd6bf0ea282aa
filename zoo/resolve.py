"""Where a pretrained model's files come from: bundled weights first, then the Hub.

The bundled folder ships inside the installed package. If it is absent (a slim
install, or a model published only to the Hub), the files are fetched with
huggingface_hub from ``entry.repo_id`` at ``entry.revision``, which reads the
standard HF cache before the network. Either way ``model.safetensors`` must
match the entry's sha256 pin.
"""

from pathlib import Path

from zoo.checkpoint import WEIGHTS_NAME, sha256_file
from zoo.errors import CheckpointError
from zoo.registry import PretrainedEntry


def verify_sha256(path: Path, expected: str, action: str = "load") -> None:
    """Raise CheckpointError (refusing to ``action`` the file) unless its sha256 is ``expected``."""
    actual = sha256_file(path)
    if actual != expected:
        raise CheckpointError(f"{path} has sha256 {actual}, but the registry pins {expected}: refusing to {action} it")


def resolve_pretrained(entry: PretrainedEntry, local_files_only: bool = False) -> Path:
    """A verified folder holding the entry's ``config.json`` and ``model.safetensors``."""
    if entry.bundled is not None and (Path(entry.bundled) / WEIGHTS_NAME).is_file():
        verify_sha256(Path(entry.bundled) / WEIGHTS_NAME, entry.sha256)
        return Path(entry.bundled)
    if entry.repo_id is None:
        raise CheckpointError(f"pretrained model {entry.name!r}: bundled weights at {entry.bundled} are missing "
                              "and no Hub repo is registered; reinstall ae-zoo")
    from zoo.hub import download_pinned

    return download_pinned(entry.repo_id, entry.revision, entry.sha256, local_files_only=local_files_only)
