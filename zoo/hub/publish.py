"""``zoo publish``: a model folder to a Hub repository, in one commit.

The repository gets ``model.safetensors``, ``config.json`` and the ``README.md`` model card,
plus ``eval.json``/``recipe.json`` and the images the card embeds when the folder has them.
Pickle files anywhere in the folder stop the upload.
"""

import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from zoo.checkpoint import CONFIG_NAME, PICKLE_REFUSAL, PICKLE_SUFFIXES, WEIGHTS_NAME, load_checkpoint
from zoo.errors import CheckpointError
from zoo.hub.download import REPO_ID
from zoo.hub.errors import HubError, hub_errors
from zoo.resolve import verify_sha256

CARD_NAME = "README.md"
EXTRA_FILES = ("eval.json", "recipe.json")
IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)>?[^)]*\)|<img\s[^>]*src=[\"']([^\"']+)[\"']", re.IGNORECASE)


@dataclass
class PublishResult:
    repo_id: str
    revision: str
    commit_oid: str
    commit_url: str
    repo_url: str
    private: bool  #: the repository's visibility as the Hub reports it
    files: list[str] = field(default_factory=list)
    changed: bool = True  #: False when the branch already held exactly these files (no new commit)


def card_images(card: str, folder: Path) -> list[str]:
    """Relative image paths the card embeds that exist in ``folder``."""
    found = []
    for match in IMAGE_LINK.finditer(card):
        ref = match.group(1) or match.group(2)
        if "://" in ref or ref.startswith(("/", "#", "data:")):
            continue
        path = (folder / ref).resolve()
        if path.is_file() and path.is_relative_to(folder.resolve()) and ref not in found:
            found.append(ref)
    return found


def check_publishable(folder: Path, architectures: dict | None = None) -> None:
    """Raise a ZooError unless ``folder`` holds loadable weights, a config and a card, and no pickle file."""
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder")
    pickles = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(f"refusing to publish {folder}: {', '.join(pickles)} "
                              f"{PICKLE_REFUSAL.removeprefix('is ')}; remove it from the folder")
    if not (folder / WEIGHTS_NAME).is_file():
        raise CheckpointError(f"refusing to publish {folder}: it has no weights ({WEIGHTS_NAME})")
    if not (folder / CARD_NAME).is_file():
        raise CheckpointError(f"refusing to publish {folder}: it has no model card ({CARD_NAME}); "
                              f"write one with `zoo card {folder}`")
    if architectures is not None:
        load_checkpoint(folder, architectures)  # the config must name a known architecture and fit the weights


def build_repo_folder(source: Path, staging: Path, architectures: dict | None = None) -> list[str]:
    """Copy what gets published from ``source`` into ``staging``; return the repo paths."""
    check_publishable(source, architectures)
    names = [WEIGHTS_NAME, CONFIG_NAME, CARD_NAME, *(n for n in EXTRA_FILES if (source / n).is_file())]
    names += card_images((source / CARD_NAME).read_text(encoding="utf-8"), source)
    for name in names:
        target = staging / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / name, target)
    return names


def publish(source: str | Path, repo_id: str, *, revision: str | None = None, private: bool = False,
            token: str | None = None, message: str | None = None, architectures: dict | None = None,
            expected_sha256: str | None = None) -> PublishResult:
    """Create ``repo_id`` if needed (``private`` applies then) and commit the model folder to ``revision``.

    ``token`` defaults to ``HF_TOKEN`` or the token stored by ``hf auth login``. A ``revision``
    other than main is created as a branch from main when missing. ``expected_sha256``, when
    given, must match the weights (a registry entry's pin).
    """
    from huggingface_hub import HfApi

    import zoo

    source = Path(source)
    if not REPO_ID.match(repo_id):
        raise HubError(f"--repo-id must look like ORG/NAME, got {repo_id!r}")
    if expected_sha256 is not None and (source / WEIGHTS_NAME).is_file():
        verify_sha256(source / WEIGHTS_NAME, expected_sha256, action="publish")
    api = HfApi(token=token, library_name="ae-zoo", library_version=zoo.__version__)
    branch = revision or "main"
    with tempfile.TemporaryDirectory(prefix="zoo-publish-") as tmp:
        files = build_repo_folder(source, Path(tmp), architectures)
        with hub_errors(f"publishing {source} to {repo_id}", token=token):
            repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
            if branch != "main":
                api.create_branch(repo_id, branch=branch, exist_ok=True)
            repo = api.repo_info(repo_id, revision=branch)
            info = api.upload_folder(repo_id=repo_id, folder_path=tmp, revision=branch,
                                     commit_message=message or f"Upload {source.resolve().name} with ae-zoo "
                                                               f"{zoo.__version__}")
    return PublishResult(repo_id=repo_id, revision=branch, commit_oid=info.oid, commit_url=info.commit_url,
                         repo_url=str(repo_url), private=bool(repo.private), files=files,
                         changed=info.oid != repo.sha)
