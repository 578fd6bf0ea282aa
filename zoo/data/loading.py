"""``load``, ``checksum`` and ``is_fetched``: the read side of the data layer."""

import torch

from zoo.data.acquire import fetch
from zoo.data.dataset import ImageDataset
from zoo.errors import DataError
from zoo.data.integrity import combined_sha256
from zoo.data.paths import dataset_dir
from zoo.data.readers import SPLITS
from zoo.data.registry import get_spec
from zoo.data.store import is_complete, verified_sha256


def is_fetched(name: str) -> bool:
    """Whether all files of dataset ``name`` are present (not hashed: see :func:`checksum`)."""
    return is_complete(get_spec(name))


def checksum(name: str) -> str:
    """Verify dataset ``name`` and return one sha256 over all its files, for recipes and evals."""
    return combined_sha256(verified_sha256(get_spec(name)))


def load(name: str, split: str = "train", *, download: bool = False) -> ImageDataset:
    """Load one split of a fetched dataset into memory, after checking every file's sha256.

    Returns uint8 images (N, C, H, W) and int64 labels (N,). A dataset that is not fetched
    raises DataError saying how to fetch it, unless ``download=True``, which first runs
    :func:`fetch` (a quick check when the files are already there; it also repairs them).
    """
    spec = get_spec(name)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} for {name}; use one of {', '.join(SPLITS)}")
    if download:
        fetch(name)
    digests = verified_sha256(spec)
    images, labels = spec.read(dataset_dir(name), split)
    if images.shape[1:] != spec.shape:
        raise DataError(f"{name}/{split}: images have shape {images.shape[1:]}, expected {spec.shape}")
    return ImageDataset(torch.from_numpy(images), torch.from_numpy(labels), name=name, split=split,
                        checksum=combined_sha256(digests))
