"""The in-memory dataset object that :func:`zoo.data.load` returns."""

import torch
from torch.utils.data import TensorDataset

from zoo.errors import DataError


class ImageDataset(TensorDataset):
    """A TensorDataset of uint8 ``images`` (N, C, H, W) and int64 ``labels`` (N,).

    ``checksum`` is the combined sha256 of the dataset's files, for recording in recipes.
    ``selection`` describes a split cut from another (``fit``/``val`` from ``train``: the rule,
    the seed, the sizes and the sha256 of the chosen indices) and ``source_indices`` holds those
    indices (int64); both are None for a split read whole.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, name: str, split: str,
                 checksum: str, selection: dict | None = None, source_indices: torch.Tensor | None = None):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise DataError(f"{name}/{split}: images must be uint8 (N, C, H, W), "
                            f"got {images.dtype} {tuple(images.shape)}")
        if labels.dtype != torch.int64 or labels.shape != images.shape[:1]:
            raise DataError(f"{name}/{split}: labels must be int64 ({len(images)},), "
                            f"got {labels.dtype} {tuple(labels.shape)}")
        super().__init__(images, labels)
        self.name = name
        self.split = split
        self.checksum = checksum
        self.selection = selection
        self.source_indices = source_indices

    @property
    def images(self) -> torch.Tensor:
        """uint8 images, (N, C, H, W)."""
        return self.tensors[0]

    @property
    def labels(self) -> torch.Tensor:
        """int64 labels, (N,)."""
        return self.tensors[1]

    def __repr__(self) -> str:
        return f"ImageDataset({self.name!r}, split={self.split!r}, images={tuple(self.images.shape)})"
