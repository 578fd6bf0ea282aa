"""Deterministic 32x32 RGB patch sets cut from a few source photos, split by photo."""

import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoo.data.readers import SPLITS


@dataclass(frozen=True)
class PatchRecipe:
    """How patches are cut: every field is recorded in the manifest next to the arrays.

    From each photo, ``per_scale`` square crops are taken at random positions for each
    crop side ``scale * shorter photo side`` and resized to ``size`` x ``size``. Training photos
    get ``train_per_scale`` crops instead, when it is set: more views of the few training photos,
    while the test patches stay exactly those that ``per_scale`` alone cuts.
    ``test_photos`` whole photos (drawn with ``seed``) go to the test split. With
    ``spread_test``, the test photos are spread over the photos' collections (the part of a
    file name before its first ``-``: ``mate-Dune.jpg`` is in ``mate``) in proportion to each
    collection's size, so that the test split shows every kind of photo the set has rather
    than whatever one draw happens to favour.
    """

    size: int = 32
    scales: tuple[float, ...] = (1 / 16, 1 / 8, 1 / 4, 1 / 2)
    per_scale: int = 64
    train_per_scale: int | None = None
    test_photos: int = 4
    seed: int = 0
    spread_test: bool = False

    def __post_init__(self):
        if self.per_scale < 1 or (self.train_per_scale is not None and self.train_per_scale < 1):
            raise ValueError(f"a photo needs at least one crop per scale; got per_scale={self.per_scale}, "
                             f"train_per_scale={self.train_per_scale}")

    def per_scale_of(self, split: str) -> int:
        """Crops per scale from each photo of ``split`` ("train" or "test")."""
        return self.train_per_scale if split == "train" and self.train_per_scale else self.per_scale

    def crops_per_photo(self, split: str) -> int:
        """How many patches each photo of ``split`` gives."""
        return len(self.scales) * self.per_scale_of(split)

    def split_photos(self, photos: Sequence[str]) -> dict[str, list[str]]:
        """Assign whole photos to splits: ``{"train": [...], "test": [...]}``, each sorted."""
        names = sorted(photos)
        if len(set(names)) != len(names):
            raise ValueError("photo names must be distinct")
        if not 0 < self.test_photos < len(names):
            raise ValueError(f"cannot hold out {self.test_photos} of {len(names)} photos")
        rng = np.random.default_rng(self.seed)
        if self.spread_test:
            test = set()
            groups = collections_of(names)
            for members, quota in zip(groups.values(), _quotas(self.test_photos, groups)):
                order = rng.permutation(len(members))
                test.update(members[i] for i in order[:quota])
        else:
            order = rng.permutation(len(names))
            test = {names[i] for i in order[: self.test_photos]}
        return {"train": [n for n in names if n not in test], "test": sorted(test)}

    def cut(self, photo: Path, photo_index: int, split: str = "test") -> np.ndarray:
        """Return the patches of a photo of ``split`` as uint8 (N, 3, size, size); the same on every call."""
        from PIL import Image

        rng = np.random.default_rng([self.seed, photo_index])
        with Image.open(photo) as image:
            image = image.convert("RGB")
            width, height = image.size
            patches = []
            for scale in self.scales:
                side = max(self.size, round(min(width, height) * scale))
                for _ in range(self.per_scale_of(split)):
                    left = int(rng.integers(0, width - side + 1))
                    top = int(rng.integers(0, height - side + 1))
                    box = (left, top, left + side, top + side)
                    patch = image.resize((self.size, self.size), Image.Resampling.LANCZOS, box=box)
                    patches.append(np.asarray(patch))
        return np.stack(patches).transpose(0, 3, 1, 2).copy()

    def build(self, photos: Sequence[Path],
              jobs: int | None = None) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
        """Cut all photos; return arrays ``{"<split>-images"/"<split>-labels": array}`` and the split.

        A label is the index of the patch's source photo in the sorted list of all photos. The photos
        are cut in ``jobs`` processes (default: one per CPU); each photo's draws are its own, so the
        arrays do not depend on ``jobs``.
        """
        by_name = {p.name: p for p in photos}
        names = sorted(by_name)
        split = self.split_photos(names)
        work = [(by_name[name], names.index(name), split_name)
                for split_name in SPLITS for name in split[split_name]]
        jobs = min(jobs or os.cpu_count() or 1, len(work))
        if jobs > 1:
            with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
                cuts = list(pool.map(self.cut, *zip(*work)))
        else:
            cuts = [self.cut(*job) for job in work]
        arrays = {}
        for split_name in SPLITS:
            mine = [(patches, index) for patches, (_, index, s) in zip(cuts, work) if s == split_name]
            arrays[f"{split_name}-images"] = np.concatenate([patches for patches, _ in mine])
            arrays[f"{split_name}-labels"] = np.concatenate(
                [np.full(len(patches), index, dtype=np.int64) for patches, index in mine])
        return arrays, split


def collection_of(name: str) -> str:
    """The collection a photo belongs to: its file name up to the first ``-`` (the whole name if none)."""
    return name.split("-", 1)[0]


def collections_of(names: Sequence[str]) -> dict[str, list[str]]:
    """``{collection: sorted member names}``, collections in sorted order."""
    groups: dict[str, list[str]] = {}
    for name in sorted(names):
        groups.setdefault(collection_of(name), []).append(name)
    return dict(sorted(groups.items()))


def _quotas(total: int, groups: dict[str, list[str]]) -> list[int]:
    """Split ``total`` over the groups in proportion to their sizes (largest remainders; ties by name)."""
    sizes = [len(members) for members in groups.values()]
    count = sum(sizes)
    exact = [total * size / count for size in sizes]
    quotas = [int(e) for e in exact]
    by_remainder = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - quotas[i]), i))
    for i in by_remainder[: total - sum(quotas)]:
        quotas[i] += 1
    return quotas
