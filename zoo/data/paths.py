"""Where datasets live on disk: ``$ZOO_DATA``, or ``~/.cache/zoo/data`` when it is unset."""

import os
from pathlib import Path

ENV_VAR = "ZOO_DATA"
DEFAULT_DIR = Path("~/.cache/zoo/data")


def data_dir() -> Path:
    """Return the root data directory (not created here)."""
    return Path(os.environ.get(ENV_VAR) or DEFAULT_DIR).expanduser()


def dataset_dir(name: str) -> Path:
    """Return the directory that holds the files of dataset ``name``."""
    return data_dir() / name
