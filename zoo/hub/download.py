"""Hub downloads with huggingface_hub into the standard HF cache, checked by sha256.

The client itself does not hash what it downloads (it only compares sizes), and it caches a
file under the name of the hash the server *advertised*. So every file is checked here: against
its blob name in the cache (sha256 for LFS files, the git blob sha1 for small ones) and, for a
registry entry, against the entry's sha256 pin. A file that fails is deleted from the cache
(blob and snapshot link), so nothing bad stays there as if it were good.
"""

import hashlib
import re
from pathlib import Path

from zoo.checkpoint import CONFIG_NAME, PICKLE_SUFFIXES, WEIGHTS_NAME, sha256_file
from zoo.errors import CheckpointError
from zoo.hub.errors import HubError, hub_errors

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")


def parse_target(spec: str) -> tuple[str, str | None]:
    """``"ORG/NAME[@REVISION]"`` -> ``(repo_id, revision or None)``."""
    repo_id, at, revision = spec.partition("@")
    if not REPO_ID.match(repo_id) or (at and not revision):
        raise HubError(f"hf://{spec}: expected hf://ORG/NAME or hf://ORG/NAME@REVISION "
                       "(a branch, tag or commit hash)")
    return repo_id, revision or None


def label(repo_id: str, revision: str | None) -> str:
    return f"hf://{repo_id}" + (f"@{revision}" if revision else "")


def download_repo(spec: str, local_files_only: bool = False) -> Path:
    """The cached snapshot folder of ``ORG/NAME[@REVISION]`` holding config.json and model.safetensors.

    Online, the revision is resolved on the Hub and missing files are downloaded; with
    ``HF_HUB_OFFLINE=1`` or ``local_files_only`` only the cache is read.
    """
    repo_id, revision = parse_target(spec)
    return fetch(repo_id, revision, local_files_only=local_files_only)


def download_pinned(repo_id: str, revision: str | None, sha256: str, local_files_only: bool = False) -> Path:
    """A registry entry's files: from the HF cache if a copy matches ``sha256``, else from the Hub.

    A cached or downloaded ``model.safetensors`` whose sha256 is not the pin is deleted from
    the cache and a CheckpointError is raised.
    """
    where = label(repo_id, revision)
    folder = cached(repo_id, revision)
    if folder is not None:
        if sha256_file(folder / WEIGHTS_NAME) == sha256 and matches_blob_name(folder / CONFIG_NAME):
            return folder
        for path in (folder / WEIGHTS_NAME, folder / CONFIG_NAME):
            purge(path)
    folder = fetch(repo_id, revision, local_files_only=local_files_only)
    actual = sha256_file(folder / WEIGHTS_NAME)
    if actual != sha256:
        purge(folder / WEIGHTS_NAME)
        raise CheckpointError(f"{where}: {WEIGHTS_NAME} has sha256 {actual}, but the registry pins {sha256}; "
                              "the file was removed from the Hugging Face cache and will not be loaded")
    return folder


def cached(repo_id: str, revision: str | None) -> Path | None:
    """The snapshot folder if both files are in the HF cache for ``revision`` (no network), else None."""
    from huggingface_hub import errors, hf_hub_download

    try:
        paths = [Path(hf_hub_download(repo_id, name, revision=revision, local_files_only=True)) for name in
                 (CONFIG_NAME, WEIGHTS_NAME)]
    except (errors.LocalEntryNotFoundError, errors.HFValidationError):
        return None
    return paths[0].parent if paths[0].parent == paths[1].parent else None


def fetch(repo_id: str, revision: str | None, *, local_files_only: bool = False) -> Path:
    """Download (or find in the cache) config.json and model.safetensors, each checked against its blob name.

    A corrupt file is deleted from the cache; online, it is downloaded once more before giving up.
    """
    from huggingface_hub import constants

    folder = _download(repo_id, revision, local_files_only)
    bad = corrupt_files(folder)
    if bad and not (local_files_only or constants.HF_HUB_OFFLINE):
        for path in bad:
            purge(path)
        folder = _download(repo_id, revision, local_files_only)
        bad = corrupt_files(folder)
    if bad:
        for path in bad:
            purge(path)
        raise CheckpointError(
            f"{label(repo_id, revision)}: {', '.join(p.name for p in bad)} did not match the checksum the Hub "
            "advertised (the download or the cached copy is corrupt); it was removed from the Hugging Face cache")
    return folder


def corrupt_files(folder: Path) -> list[Path]:
    return [path for path in (folder / CONFIG_NAME, folder / WEIGHTS_NAME) if not matches_blob_name(path)]


def _download(repo_id: str, revision: str | None, local_files_only: bool) -> Path:
    from huggingface_hub import errors, hf_hub_download

    import zoo

    where = label(repo_id, revision)
    options = dict(local_files_only=local_files_only, library_name="ae-zoo", library_version=zoo.__version__)
    with hub_errors(where, local_files_only=local_files_only):
        missing = CONFIG_NAME
        try:
            config = Path(hf_hub_download(repo_id, CONFIG_NAME, revision=revision, **options))
            # Fetch the weights at the very commit the config came from, even if a branch moves meanwhile.
            commit = config.parent.name if COMMIT.match(config.parent.name) else revision
            missing = WEIGHTS_NAME
            weights = Path(hf_hub_download(repo_id, WEIGHTS_NAME, revision=commit, **options))
        except errors.RemoteEntryNotFoundError:
            refuse_foreign_repo(repo_id, revision, missing)
    if config.parent != weights.parent:
        raise HubError(f"{where}: {CONFIG_NAME} and {WEIGHTS_NAME} resolved to different commits; try again")
    return weights.parent


def refuse_foreign_repo(repo_id: str, revision: str | None, missing: str) -> None:
    """Raise CheckpointError for a repo without ae-zoo files, naming any pickle weights it holds instead."""
    from huggingface_hub import HfApi

    where = label(repo_id, revision)
    try:
        files = HfApi().list_repo_files(repo_id, revision=revision)
    except Exception:  # the listing only improves the message
        files = []
    pickles = [f for f in files if Path(f).suffix.lower() in PICKLE_SUFFIXES]
    if pickles and WEIGHTS_NAME not in files:
        raise CheckpointError(f"{where} holds only pickle weights ({', '.join(pickles)}) and no {WEIGHTS_NAME}: "
                              "refused, because unpickling can run arbitrary code and ae-zoo loads weights only "
                              f"from {WEIGHTS_NAME}. Convert the weights to safetensors (and publish them with "
                              "`zoo publish`)") from None
    listing = f" (it holds: {', '.join(files)})" if files else ""
    raise CheckpointError(f"{where} has no {missing}, so it is not an ae-zoo model repository{listing}. "
                          f"An ae-zoo repo holds {CONFIG_NAME} and {WEIGHTS_NAME}, as `zoo publish` writes") from None


def git_blob_sha1(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def matches_blob_name(path: Path) -> bool:
    """Whether a cached file hashes to its blob's name (sha256 for LFS, git sha1 otherwise).

    Where the cache cannot use symlinks the snapshot holds copies and there is no blob name
    to check: those count as matching (a registry pin still checks the weights).
    """
    blob = path.resolve().name
    if SHA256.match(blob):
        return sha256_file(path) == blob
    if COMMIT.match(blob):
        return git_blob_sha1(path) == blob
    return True


def purge(path: Path) -> None:
    """Delete a cached file: its snapshot link and the blob it points to."""
    blob = path.resolve()
    path.unlink(missing_ok=True)
    if blob != path:
        blob.unlink(missing_ok=True)
