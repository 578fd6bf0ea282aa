"""Registry entries for the built-in pretrained models.

Each model's Hub-ready folder (``model.safetensors``, ``config.json``, the
``README.md`` card and its eval results) ships in ``model_cards/<name>/``,
installed as the ``zoo_model_cards`` package. The owning plugin pins the
weights' sha256; the same files are published as ``ae-zoo/<name>`` on the Hub.
"""

import json
from importlib import resources
from pathlib import Path

from zoo.registry import PretrainedEntry

HUB_ORGANISATION = "ae-zoo"
EVAL_RESULTS = "eval.json"


def cards_root() -> Path | None:
    """The installed ``model_cards`` folder, or None where it is not shipped (e.g. inside a .mar)."""
    try:
        return Path(str(resources.files("zoo_model_cards")))
    except ModuleNotFoundError:
        return None


def bundled_entries(pins: dict[str, str]) -> list[PretrainedEntry]:
    """Entries for every pinned model whose folder is present; ``pins`` maps name -> sha256."""
    root = cards_root()
    entries = []
    for name, sha256 in pins.items():
        folder = root / name if root else None
        if folder is None or not (folder / "config.json").is_file():
            continue
        results = folder / EVAL_RESULTS
        metadata = json.loads(results.read_text()) if results.is_file() else {}
        entries.append(PretrainedEntry.from_folder(name, folder, sha256=sha256, repo_id=f"{HUB_ORGANISATION}/{name}",
                                                   metadata=metadata))
    return entries
