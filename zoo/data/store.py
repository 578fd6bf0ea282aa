"""The on-disk layout of a fetched dataset, and checking that it is complete and intact."""

import json
from dataclasses import asdict

from zoo.errors import DataError
from zoo.data.integrity import combined_sha256, verify_file
from zoo.data.paths import dataset_dir
from zoo.data.registry import DatasetSpec

MANIFEST = "manifest.json"


def fetch_hint(name: str) -> str:
    """The sentence that tells a user how to get dataset ``name``."""
    return f"run `zoo data fetch {name}` (or call zoo.data.load({name!r}, download=True))"


def expected_manifest(spec: DatasetSpec) -> dict:
    """What a current manifest of built patches must record: the recipe and the source files."""
    return {"recipe": json.loads(json.dumps(asdict(spec.patches))),
            "sources_sha256": combined_sha256(spec.files)}


def current_manifest(spec: DatasetSpec) -> dict | None:
    """Return the patch manifest if it exists and matches the spec's recipe and sources, else None."""
    path = dataset_dir(spec.name) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):  # absent or unreadable: the patches get rebuilt
        return None
    expected = expected_manifest(spec)
    return manifest if all(manifest.get(k) == v for k, v in expected.items()) else None


def is_complete(spec: DatasetSpec) -> bool:
    """Whether every file of the dataset is present (a cheap check: nothing is hashed)."""
    directory = dataset_dir(spec.name)
    if not all((directory / f).is_file() for f in spec.files):
        return False
    if spec.patches is None:
        return True
    manifest = current_manifest(spec)
    return manifest is not None and all((directory / f).is_file() for f in manifest["files"])


def verified_sha256(spec: DatasetSpec) -> dict[str, str]:
    """Hash every file of a fetched dataset against its pin; return ``{file: sha256}``.

    Raises DataError saying how to fetch when files are missing or the patches are stale;
    a corrupt file is deleted and named with both hashes.
    """
    if not is_complete(spec):
        raise DataError(f"dataset {spec.name!r} is not fetched into {dataset_dir(spec.name)}: "
                        f"{fetch_hint(spec.name)}")
    digests = dict(spec.files)
    if spec.patches is not None:
        digests.update(current_manifest(spec)["files"])
    directory = dataset_dir(spec.name)
    for file_name, sha in digests.items():
        try:
            verify_file(directory / file_name, sha)
        except DataError as e:
            raise DataError(f"{spec.name}: {e}; {fetch_hint(spec.name)} to get it again") from None
    return digests
