"""Read one split of an installed dataset into uint8 images (N, C, H, W) and int64 labels (N,)."""

from pathlib import Path

import numpy as np

from zoo.data.idx import read_idx

SPLITS = ("train", "test")
_IDX_PREFIX = {"train": "train", "test": "t10k"}


def read_idx_split(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read an MNIST-layout split: ``<prefix>-images-idx3-ubyte`` and ``<prefix>-labels-idx1-ubyte``."""
    prefix = _IDX_PREFIX[split]
    images = read_idx(directory / f"{prefix}-images-idx3-ubyte")
    labels = read_idx(directory / f"{prefix}-labels-idx1-ubyte")
    return images[:, None], labels.astype(np.int64)


def read_npy_split(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read ``<split>-images.npy`` and ``<split>-labels.npy`` (never unpickling anything)."""
    images = np.load(directory / f"{split}-images.npy", allow_pickle=False)
    labels = np.load(directory / f"{split}-labels.npy", allow_pickle=False)
    return images, labels
