"""The validation split: a fixed part of a dataset's training split, held out to choose epochs and settings on.

``load(name, "val")`` and ``load(name, "fit")`` divide the ``train`` split in two, disjointly and
always the same way; ``train`` stays the whole training split and ``test`` is untouched.

Two rules, chosen per dataset in its :class:`~zoo.data.registry.DatasetSpec`:

- ``count``: hold out ``count`` images drawn at random (MNIST, Fashion-MNIST: 5,000 of 60,000,
  leaving 55,000 to fit). Image ``i`` of the training split gets the key ``k[i]``, the ``i``-th
  64-bit output of ``numpy.random.PCG64(seed)`` (a bit generator whose stream numpy keeps
  stable); the ``count`` images with the smallest keys are the validation split.
- ``groups``: hold out every image of ``groups`` labels, drawn the same way over the sorted
  distinct labels. For sets whose label is the image's source (the photo patches: label =
  source photo), this keeps patches of one photo on one side, as the test split does.

Both splits list their images in training-split order. The sha256 of the validation indices
(int64 little-endian) is pinned in the spec, so a change in the rule, the generator or the data
is an error, not a silently different split; each loaded split records its own indices' sha256.
"""

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from zoo.errors import DataError


def indices_sha256(indices: np.ndarray) -> str:
    """sha256 of image indices as int64 little-endian bytes: what a recipe records to pin a subset."""
    return hashlib.sha256(np.ascontiguousarray(indices, dtype="<i8").tobytes()).hexdigest()


@dataclass(frozen=True)
class ValidationSplit:
    """How the ``train`` split is divided into ``fit`` and ``val``: set exactly one of ``count`` or ``groups``."""

    count: int = 0
    groups: int = 0
    seed: int = 0
    val_sha256: str | None = None  # pin: sha256 of the validation indices (see indices_sha256)

    def __post_init__(self):
        if (self.count > 0) == (self.groups > 0) or self.count < 0 or self.groups < 0:
            raise ValueError(f"a ValidationSplit holds out a positive count of images or of groups, not both; "
                             f"got count={self.count}, groups={self.groups}")

    @property
    def rule(self) -> str:
        if self.count:
            return f"{self.count} images drawn at random (PCG64 keys, seed {self.seed})"
        return f"all images of {self.groups} labels drawn at random (PCG64 keys, seed {self.seed})"

    @staticmethod
    def _smallest_keys(n: int, take: int, seed: int) -> np.ndarray:
        keys = np.random.PCG64(seed).random_raw(n)
        return np.argsort(keys, kind="stable")[:take]

    def val_indices(self, labels: np.ndarray, where: str = "dataset") -> np.ndarray:
        """Sorted indices into the training split of its validation images."""
        n = len(labels)
        if self.count:
            if not 0 < self.count < n:
                raise DataError(f"{where}: cannot hold out {self.count} of {n} training images for validation")
            chosen = self._smallest_keys(n, self.count, self.seed)
        else:
            distinct = np.unique(labels)
            if not 0 < self.groups < len(distinct):
                raise DataError(f"{where}: cannot hold out {self.groups} of {len(distinct)} labels for validation")
            held = distinct[self._smallest_keys(len(distinct), self.groups, self.seed)]
            chosen = np.flatnonzero(np.isin(labels, held))
        return np.sort(chosen).astype(np.int64)

    def select(self, split: str, labels: np.ndarray, where: str = "dataset") -> tuple[np.ndarray, dict[str, Any]]:
        """The indices of ``split`` ("fit" or "val") into the training split, and what to record about them."""
        val = self.val_indices(labels, where)
        digest = indices_sha256(val)
        if self.val_sha256 is not None and digest != self.val_sha256:
            raise DataError(f"{where}: the validation split came out different from the pinned one (sha256 of its "
                            f"indices {digest}, expected {self.val_sha256}); the training data or the split rule "
                            "changed, so runs would not be comparable")
        chosen = val if split == "val" else np.setdiff1d(np.arange(len(labels)), val, assume_unique=True)
        record = {"of": "train", "rule": self.rule, "seed": self.seed, "val_images": int(len(val)),
                  "fit_images": int(len(labels) - len(val)), "val_indices_sha256": digest,
                  "indices_sha256": indices_sha256(chosen)}
        if self.groups:
            record["val_labels"] = sorted(int(v) for v in np.unique(labels[val]))
        return chosen, record
