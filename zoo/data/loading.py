"""``load``, ``checksum`` and ``is_fetched``: the read side of the data layer."""

import numpy as np
import torch

from zoo.data.acquire import fetch
from zoo.data.dataset import ImageDataset
from zoo.errors import DataError
from zoo.data.integrity import combined_sha256
from zoo.data.paths import dataset_dir
from zoo.data.readers import SPLITS as FILE_SPLITS
from zoo.data.registry import get_spec
from zoo.data.store import is_complete, verified_sha256

#: ``train`` and ``test`` as the dataset ships them; ``fit`` + ``val`` = ``train``, divided by the
#: dataset's :class:`~zoo.data.validation.ValidationSplit` (disjoint, always the same).
SPLITS = (*FILE_SPLITS, "fit", "val")


def is_fetched(name: str) -> bool:
    """Whether all files of dataset ``name`` are present (not hashed: see :func:`checksum`)."""
    return is_complete(get_spec(name))


def checksum(name: str) -> str:
    """Verify dataset ``name`` and return one sha256 over all its files, for recipes and evals."""
    return combined_sha256(verified_sha256(get_spec(name)))


def load(name: str, split: str = "train", *, download: bool = False) -> ImageDataset:
    """Load one split of a fetched dataset into memory, after checking every file's sha256.

    ``split`` is ``train`` or ``test`` as the dataset ships them, or ``fit`` / ``val``: the
    training split divided into a part to train on and a fixed validation part, to choose
    epochs and settings on without touching ``test`` (see :mod:`zoo.data.validation`; the
    returned dataset's ``selection`` records the rule and the sha256 of its indices).

    Returns uint8 images (N, C, H, W) and int64 labels (N,). A dataset that is not fetched
    raises DataError saying how to fetch it, unless ``download=True``, which first runs
    :func:`fetch` (a quick check when the files are already there; it also repairs them).
    """
    spec = get_spec(name)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} for {name}; use one of {', '.join(SPLITS)}")
    if split in ("fit", "val") and spec.validation is None:
        raise DataError(f"{name} has no validation split (no ValidationSplit in its spec), so there is no "
                        f"{split!r}; use 'train' and 'test'")
    if download:
        fetch(name)
    digests = verified_sha256(spec)
    images, labels = spec.read(dataset_dir(name), "train" if split in ("fit", "val") else split)
    if images.shape[1:] != spec.shape:
        raise DataError(f"{name}/{split}: images have shape {images.shape[1:]}, expected {spec.shape}")
    selection = chosen = None
    if split in ("fit", "val"):
        chosen, selection = spec.validation.select(split, labels, where=name)
        images, labels = np.ascontiguousarray(images[chosen]), np.ascontiguousarray(labels[chosen])
    return ImageDataset(torch.from_numpy(images), torch.from_numpy(labels), name=name, split=split,
                        checksum=combined_sha256(digests), selection=selection,
                        source_indices=None if chosen is None else torch.from_numpy(chosen))
