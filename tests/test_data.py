"""Tests of zoo.data on small generated fixtures, plus one on the real MNIST when it is fetched."""

import gzip
import hashlib
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import zoo.data
from zoo.data import Batches, DataError, DatasetSpec, ImageDataset
from zoo.data.patches import PatchRecipe
from zoo.data.readers import read_idx_split, read_npy_split
from zoo.data.sources import Source
from zoo.data.validation import ValidationSplit, indices_sha256
from zoo.errors import ZooError

IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode an array in the IDX format (written here independently of the reader)."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}
    header = struct.pack(">BBBB", 0, 0, codes[array.dtype], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def tiny_idx_files(n_train: int = 6, n_test: int = 3) -> dict[str, bytes]:
    """The four MNIST-layout files for a tiny 1x4x4 dataset."""
    rng = np.random.default_rng(0)
    return {
        "train-images-idx3-ubyte": idx_bytes(rng.integers(0, 256, (n_train, 4, 4), dtype=np.uint8)),
        "train-labels-idx1-ubyte": idx_bytes(np.arange(n_train, dtype=np.uint8) % 10),
        "t10k-images-idx3-ubyte": idx_bytes(rng.integers(0, 256, (n_test, 4, 4), dtype=np.uint8)),
        "t10k-labels-idx1-ubyte": idx_bytes(np.arange(n_test, dtype=np.uint8) % 10),
    }


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def writing_source(label: str, contents: dict[str, bytes]) -> Source:
    """A source that 'downloads' by writing ``contents`` into the staging directory."""

    def unpack(staging: Path) -> Path:
        for name, content in contents.items():
            (staging / name).write_bytes(content)
        return staging

    return Source(label, {name: name for name in contents}, unpack)


def failing_source(files) -> Source:
    def unpack(staging: Path) -> Path:
        raise DataError("download failed: no network")

    return Source("offline download", {name: name for name in files}, unpack)


@pytest.fixture
def data_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "data"
    monkeypatch.setenv("ZOO_DATA", str(home))
    return home


def register(monkeypatch, spec: DatasetSpec) -> DatasetSpec:
    monkeypatch.setitem(zoo.data.DATASETS, spec.name, spec)
    return spec


def idx_spec(name: str, pins: dict[str, str], *sources: Source, validation=None) -> DatasetSpec:
    return DatasetSpec(name=name, description="tiny test set", shape=(1, 4, 4), files=pins,
                       sources=sources, read=read_idx_split, validation=validation)


# --- IDX parsing -------------------------------------------------------------------------------


def test_read_idx_plain_and_gzipped(tmp_path):
    images = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    labels = np.array([7, -1, 70000], dtype=np.int32)
    (tmp_path / "images").write_bytes(idx_bytes(images))
    with gzip.open(tmp_path / "labels.gz", "wb") as f:
        f.write(idx_bytes(labels))

    read_images = zoo.data.read_idx(tmp_path / "images")
    read_labels = zoo.data.read_idx(tmp_path / "labels.gz")

    np.testing.assert_array_equal(read_images, images)
    np.testing.assert_array_equal(read_labels, labels)
    assert read_images.flags.writeable and read_labels.dtype == np.int32


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "junk").write_bytes(b"\x89PNG not idx")
    (tmp_path / "short").write_bytes(idx_bytes(np.zeros((4, 2, 2), np.uint8))[:-1])
    with pytest.raises(DataError, match="not an IDX file"):
        zoo.data.read_idx(tmp_path / "junk")
    with pytest.raises(DataError, match="header says shape"):
        zoo.data.read_idx(tmp_path / "short")


# --- fetch, verification, load --------------------------------------------------------------------


def test_checksum_mismatch_names_file_and_keeps_nothing(data_home, monkeypatch):
    good = tiny_idx_files()
    tampered = dict(good, **{"train-images-idx3-ubyte": good["train-images-idx3-ubyte"][:-1] + b"\xff"})
    spec = register(monkeypatch, idx_spec("tiny", {n: sha(c) for n, c in good.items()},
                                          writing_source("tampered mirror", tampered)))

    with pytest.raises(DataError) as caught:
        zoo.data.fetch("tiny")

    message = str(caught.value)
    assert "train-images-idx3-ubyte" in message
    assert spec.files["train-images-idx3-ubyte"] in message
    assert sha(tampered["train-images-idx3-ubyte"]) in message
    assert isinstance(caught.value, ZooError)
    assert "train-images-idx3-ubyte" not in os.listdir(data_home / "tiny")
    assert not any(p.name.startswith(".staging") for p in (data_home / "tiny").iterdir())
    assert not zoo.data.is_fetched("tiny")


def test_fetch_tries_sources_in_order_and_load_reads_them(data_home, monkeypatch):
    files = tiny_idx_files()
    messages = []
    register(monkeypatch, idx_spec("tiny", {n: sha(c) for n, c in files.items()},
                                   failing_source(files), writing_source("registry package", files)))

    zoo.data.fetch("tiny", progress=messages.append)
    train, test = zoo.data.load("tiny"), zoo.data.load("tiny", "test")

    assert any("offline download failed" in m for m in messages)
    assert isinstance(train, ImageDataset) and len(train) == 6 and len(test) == 3
    assert train.images.dtype == torch.uint8 and train.images.shape == (6, 1, 4, 4)
    assert train.labels.dtype == torch.int64 and train.labels.tolist() == [0, 1, 2, 3, 4, 5]
    assert train.checksum == zoo.data.checksum("tiny") == test.checksum


def test_fetch_gunzips_gz_sources(data_home, monkeypatch):
    files = tiny_idx_files()
    packed = {f"{n}.gz": gzip.compress(c) for n, c in files.items()}
    source = writing_source("deb", packed)
    source = Source(source.label, {n: f"{n}.gz" for n in files}, source.unpack)
    register(monkeypatch, idx_spec("tiny", {n: sha(c) for n, c in files.items()}, source))

    zoo.data.fetch("tiny")

    assert (data_home / "tiny" / "train-images-idx3-ubyte").read_bytes() == files["train-images-idx3-ubyte"]


def test_load_of_missing_dataset_says_how_to_fetch(data_home):
    with pytest.raises(DataError, match=r"run `zoo data fetch mnist`"):
        zoo.data.load("mnist")
    with pytest.raises(DataError, match="unknown dataset 'nope'; known: fashion-mnist, mnist, photos"):
        zoo.data.load("nope")


def test_load_download_fetches_when_missing(data_home, monkeypatch):
    files = tiny_idx_files()
    register(monkeypatch, idx_spec("tiny", {n: sha(c) for n, c in files.items()},
                                   writing_source("registry package", files)))

    assert len(zoo.data.load("tiny", "test", download=True)) == 3


def test_corrupt_installed_file_is_deleted_and_refetched(data_home, monkeypatch):
    files = tiny_idx_files()
    register(monkeypatch, idx_spec("tiny", {n: sha(c) for n, c in files.items()},
                                   writing_source("registry package", files)))
    zoo.data.fetch("tiny")
    labels = data_home / "tiny" / "t10k-labels-idx1-ubyte"
    labels.write_bytes(b"bit rot")

    with pytest.raises(DataError, match="sha256 mismatch for t10k-labels-idx1-ubyte.*zoo data fetch tiny"):
        zoo.data.load("tiny")
    assert not labels.exists()

    zoo.data.fetch("tiny")
    assert labels.read_bytes() == files["t10k-labels-idx1-ubyte"]


# --- the validation split -------------------------------------------------------------------------


def test_fit_and_val_divide_train_disjointly_the_same_way_every_time(data_home, monkeypatch):
    files = tiny_idx_files(n_train=40)
    pins = {n: sha(c) for n, c in files.items()}
    split = ValidationSplit(count=7, seed=3)
    register(monkeypatch, idx_spec("tiny", pins, writing_source("registry package", files), validation=split))
    zoo.data.fetch("tiny")

    train, fit, val = (zoo.data.load("tiny", s) for s in ("train", "fit", "val"))
    again = zoo.data.load("tiny", "val")

    assert (len(train), len(fit), len(val)) == (40, 33, 7)
    val_ids, fit_ids = val.source_indices, fit.source_indices
    assert not set(val_ids.tolist()) & set(fit_ids.tolist())
    assert sorted(val_ids.tolist() + fit_ids.tolist()) == list(range(40))
    assert torch.equal(val.images, train.images[val_ids]) and torch.equal(fit.labels, train.labels[fit_ids])
    assert torch.equal(again.images, val.images) and again.selection == val.selection
    assert val.split == "val" and fit.split == "fit" and train.selection is None
    assert val.checksum == fit.checksum == train.checksum == zoo.data.checksum("tiny")
    assert val.selection["val_indices_sha256"] == fit.selection["val_indices_sha256"] == indices_sha256(val_ids)
    assert fit.selection["indices_sha256"] == indices_sha256(fit_ids)
    assert (val.selection["val_images"], val.selection["fit_images"], val.selection["seed"]) == (7, 33, 3)
    other = ValidationSplit(count=7, seed=4).val_indices(np.zeros(40))
    assert not np.array_equal(other, val_ids.numpy())  # the seed matters


def test_a_pinned_validation_split_that_changes_is_an_error(data_home, monkeypatch):
    files = tiny_idx_files(n_train=40)
    pins = {n: sha(c) for n, c in files.items()}
    good = indices_sha256(ValidationSplit(count=7).val_indices(np.zeros(40)))
    register(monkeypatch, idx_spec("tiny", pins, writing_source("registry package", files),
                                   validation=ValidationSplit(count=7, val_sha256=good)))
    zoo.data.fetch("tiny")
    assert len(zoo.data.load("tiny", "val")) == 7
    register(monkeypatch, idx_spec("tiny", pins, validation=ValidationSplit(count=7, val_sha256="0" * 64)))
    with pytest.raises(DataError, match=r"tiny: the validation split came out different from the pinned one"):
        zoo.data.load("tiny", "fit")


def test_splits_that_do_not_exist_are_named(data_home, monkeypatch):
    files = tiny_idx_files()
    register(monkeypatch, idx_spec("tiny", {n: sha(c) for n, c in files.items()},
                                   writing_source("registry package", files)))
    zoo.data.fetch("tiny")
    with pytest.raises(DataError, match=r"tiny has no validation split .*so there is no 'val'; use 'train' and 'test'"):
        zoo.data.load("tiny", "val")
    with pytest.raises(DataError, match=r"unknown split 'valid' for tiny; use one of train, test, fit, val"):
        zoo.data.load("tiny", "valid")
    with pytest.raises(ValueError, match="not both"):
        ValidationSplit(count=3, groups=1)
    with pytest.raises(DataError, match="cannot hold out 6 of 6 training images"):
        ValidationSplit(count=6).val_indices(np.zeros(6), where="tiny")


def test_group_validation_split_keeps_each_group_on_one_side():
    labels = np.repeat(np.array([3, 8, 1, 5, 9]), 4)
    split = ValidationSplit(groups=2, seed=0)
    val, record = split.select("val", labels)
    fit, _ = split.select("fit", labels)
    assert len(set(labels[val].tolist())) == 2 and not set(labels[val].tolist()) & set(labels[fit].tolist())
    assert sorted(val.tolist() + fit.tolist()) == list(range(20))
    assert record["val_labels"] == sorted(set(labels[val].tolist()))


def test_builtin_validation_splits_are_pinned():
    spec = zoo.data.get_spec("mnist")
    assert spec.validation.count == 5000 and zoo.data.get_spec("fashion-mnist").validation == spec.validation
    val = spec.validation.val_indices(np.zeros(60000, dtype=np.int64))
    assert len(val) == 5000 and indices_sha256(val) == spec.validation.val_sha256  # the rule reproduces its pin
    photos = zoo.data.get_spec("photos").validation
    assert photos.groups > 0 and photos.count == 0  # whole photos (a patch's label), like the test split


# --- photo patches --------------------------------------------------------------------------------


def make_photos(directory: Path, count: int = 5) -> list[Path]:
    """Small photos, each filled with its own colour so a patch shows where it came from."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = directory / f"photo{i}.png"
        Image.new("RGB", (96 + 8 * i, 64), (40 * i, 255 - 40 * i, 7)).save(path)
        paths.append(path)
    return paths


def test_patch_split_holds_out_whole_photos(tmp_path):
    recipe = PatchRecipe(size=8, scales=(0.25, 0.5), per_scale=3, test_photos=2, seed=1)
    photos = make_photos(tmp_path)

    arrays, split = recipe.build(photos, jobs=2)
    again, _ = recipe.build(photos, jobs=1)  # cut in this process: the same arrays

    names = sorted(p.name for p in photos)
    train_labels = set(arrays["train-labels"].tolist())
    test_labels = set(arrays["test-labels"].tolist())
    assert not train_labels & test_labels
    assert train_labels | test_labels == set(range(len(photos)))
    assert {names[i] for i in test_labels} == set(split["test"]) and len(split["test"]) == 2
    assert arrays["train-images"].shape == (3 * 6, 3, 8, 8) and arrays["train-images"].dtype == np.uint8
    for split_name in ("train", "test"):  # each patch lies beside the label of the photo it was cut from
        for patch, label in zip(arrays[f"{split_name}-images"], arrays[f"{split_name}-labels"]):
            assert tuple(patch[:, 0, 0]) == (40 * label, 255 - 40 * label, 7)
    for key in arrays:
        np.testing.assert_array_equal(arrays[key], again[key])


def test_training_photos_get_more_crops_and_the_test_patches_stay_the_same(tmp_path):
    photos = []
    for i in range(5):
        photos.append(tmp_path / f"noise{i}.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(photos[-1])
    plain = PatchRecipe(size=8, scales=(0.25, 0.5), per_scale=3, test_photos=2, seed=1)
    dense = PatchRecipe(size=8, scales=(0.25, 0.5), per_scale=3, train_per_scale=7, test_photos=2, seed=1)

    (plain_arrays, plain_split), (dense_arrays, dense_split) = plain.build(photos), dense.build(photos)

    assert dense_split == plain_split
    for key in ("test-images", "test-labels"):
        np.testing.assert_array_equal(dense_arrays[key], plain_arrays[key])
    assert (dense.crops_per_photo("train"), dense.crops_per_photo("test")) == (14, 6)
    assert dense_arrays["train-images"].shape == (3 * 14, 3, 8, 8)
    counts = np.unique(dense_arrays["train-labels"], return_counts=True)[1]
    assert counts.tolist() == [14, 14, 14]  # every training photo gives the larger number
    # the extra crops are new views, not copies of the same few
    assert len(np.unique(dense_arrays["train-images"].reshape(42, -1), axis=0)) == 42


@pytest.mark.parametrize("fields", [{"per_scale": 0}, {"train_per_scale": 0}, {"train_per_scale": -2}])
def test_a_patch_recipe_needs_a_crop_per_scale(fields):
    with pytest.raises(ValueError, match="at least one crop per scale"):
        PatchRecipe(**fields)


def test_patch_dataset_is_built_cached_and_verified(data_home, tmp_path, monkeypatch):
    photos = {p.name: p.read_bytes() for p in make_photos(tmp_path / "src")}
    register(monkeypatch, DatasetSpec(
        name="tiny-photos", description="tiny", shape=(3, 8, 8),
        files={n: sha(c) for n, c in photos.items()},
        sources=(writing_source("photo album", photos),), read=read_npy_split,
        patches=PatchRecipe(size=8, scales=(0.5,), per_scale=4, test_photos=1)))

    test = zoo.data.load("tiny-photos", "test", download=True)
    train = zoo.data.load("tiny-photos", "train")

    assert test.images.shape == (4, 3, 8, 8) and len(train) == 16
    assert not set(test.labels.tolist()) & set(train.labels.tolist())
    npy = data_home / "tiny-photos" / "train-images.npy"
    npy.write_bytes(npy.read_bytes()[:-1] + b"\x00")
    with pytest.raises(DataError, match="sha256 mismatch for train-images.npy"):
        zoo.data.load("tiny-photos")
    assert torch.equal(zoo.data.load("tiny-photos", download=True).images, train.images)



def test_photo_registry_records_source_licence_and_sha256_of_every_photo():
    from zoo.data.photos import PHOTOS
    from zoo.data.sources import SKIMAGE

    spec = zoo.data.get_spec("photos")
    names = [photo.name for photo in PHOTOS]

    assert len(names) == len(set(names)) == len(spec.files) >= 50
    assert spec.files == {photo.name: photo.sha256 for photo in PHOTOS}
    for photo in PHOTOS:
        assert len(photo.sha256) == 64 and int(photo.sha256, 16) >= 0, photo.name
        assert photo.package and photo.version and photo.path and photo.credit, photo.name
        assert any(term in photo.licence for term in ("GPL", "CC", "public domain", "BSD", "GFDL", "matplotlib")), \
            photo.name
        # named after the file it is: every word of the name after the collection is in the path
        assert all(word in photo.path for word in Path(photo.name.split("-", 1)[1]).stem.split("-")), photo.name
    # every photo comes from exactly one source: the package (at its pinned version) named in its entry
    provided = [(name, source.label) for source in spec.sources for name in source.files]
    assert sorted(name for name, _ in provided) == sorted(names)
    label = dict(provided)
    for photo in PHOTOS:
        expected = "scikit-image" if photo.package == SKIMAGE else f"Debian package {photo.package} {photo.version}"
        assert label[photo.name].startswith(expected), (photo.name, label[photo.name])


def test_photo_split_is_by_photo_disjoint_and_spread_over_collections():
    from zoo.data.patches import collection_of, collections_of

    spec = zoo.data.get_spec("photos")
    split = spec.patches.split_photos(list(spec.files))

    assert split == spec.patches.split_photos(list(reversed(list(spec.files))))  # order of the names is irrelevant
    assert not set(split["train"]) & set(split["test"])
    assert sorted(split["train"] + split["test"]) == sorted(spec.files)
    assert len(split["test"]) == spec.patches.test_photos
    # the test photos come from every collection big enough to lend one, in proportion to its size
    sizes = {c: len(m) for c, m in collections_of(list(spec.files)).items()}
    held = {c: sum(collection_of(n) == c for n in split["test"]) for c in sizes}
    for collection, size in sizes.items():
        share = spec.patches.test_photos * size / len(spec.files)
        assert abs(held[collection] - share) < 1, (collection, held[collection], share)


#: The photos held out before the GCompris photos joined the set (12 test, 8 validation): they must stay
#: held out, so that a model trained on the older set can still be measured on the new held-out photos.
EARLIER_TEST_PHOTOS = (
    "lomiri-Bridge_by_Sander_Klootwijk.jpg", "lomiri-Kleiber_by_Lukas_Baubkus.jpg",
    "lomiri-Picture_0B_by_freespace.jpg", "lxqt-beam.png", "lxqt-butterfly.png", "mate-Garden.jpg", "mate-LadyBird.jpg", "mate-RainDrops.jpg",
    "palapeli-cincinnati-bridge.jpg", "plasma-Kite.jpg", "plasma-summer_1am.jpg", "skimage-motorcycle_left.png")
EARLIER_VAL_PHOTOS = (
    "lomiri-Wine_by_Jakkub_Mede.jpg", "lomiri-aitzgorri_by_Aitzol_Berasategi.jpg", "lxqt-Butterfly-Kenneth-Wimer.jpg",
    "lxqt-after-the-rain.jpg", "lxqt-cloud.png", "mate-Aqua.jpg", "mate-Blinds.jpg", "palapeli-european-honey-bee.jpg")


def test_photos_held_out_before_stay_held_out_and_the_validation_pin_holds():
    spec = zoo.data.get_spec("photos")
    names = sorted(spec.files)
    split = spec.patches.split_photos(names)
    # the training split's labels as the patch builder lays them out: each training photo's crops in a block
    labels = np.repeat([names.index(n) for n in split["train"]], spec.patches.crops_per_photo("train"))
    val_photos = {names[i] for i in np.unique(labels[spec.validation.val_indices(labels)])}
    _, record = spec.validation.select("val", labels)  # raises if the split no longer matches its pin

    earlier = {n for n in names if not n.startswith("wikimedia-")}
    assert set(split["test"]) & earlier == set(EARLIER_TEST_PHOTOS)
    assert val_photos & earlier == set(EARLIER_VAL_PHOTOS)
    assert record["val_indices_sha256"] == spec.validation.val_sha256
    # the newer photos are held out in about the same shares
    newer = [n for n in names if n.startswith("wikimedia-")]
    assert 0.15 < len(set(split["test"]) & set(newer)) / len(newer) < 0.3
    assert 0.1 < len(val_photos - earlier) / len(set(newer) - set(split["test"])) < 0.3


def test_spread_test_split_takes_each_collections_share():
    names = [f"big-{i}.png" for i in range(6)] + [f"mid-{i}.png" for i in range(3)] + ["one-0.png"]
    recipe = PatchRecipe(test_photos=5, spread_test=True, seed=3)

    split = recipe.split_photos(names)
    again = PatchRecipe(test_photos=5, spread_test=True, seed=3).split_photos(names)
    other = PatchRecipe(test_photos=5, spread_test=True, seed=4).split_photos(names)

    counts = {c: sum(n.startswith(c + "-") for n in split["test"]) for c in ("big", "mid", "one")}
    assert counts == {"big": 3, "mid": 2, "one": 0}  # 5 * 6/10 = 3, 5 * 3/10 = 1.5 -> 2, 5 * 1/10 = 0.5 -> 0
    assert split == again and split != other
    with pytest.raises(ValueError, match="cannot hold out 10 of 10 photos"):
        PatchRecipe(test_photos=10, spread_test=True).split_photos(names)


def test_patch_cutting_is_deterministic_and_seeded(tmp_path):
    path = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 120, 3), dtype=np.uint8)).save(path)
    recipe = PatchRecipe(size=8, scales=(0.25, 0.5), per_scale=5, seed=2)

    first, again = recipe.cut(path, 3), recipe.cut(path, 3)

    assert first.shape == (10, 3, 8, 8) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, recipe.cut(path, 4))  # each photo has its own draws
    assert not np.array_equal(first, PatchRecipe(size=8, scales=(0.25, 0.5), per_scale=5, seed=5).cut(path, 3))


def test_debian_source_asks_for_the_pinned_version_then_the_current_one(tmp_path, monkeypatch):
    import zoo.data.sources as sources

    calls = []

    def fake_run(command, *, cwd, tool, hint=""):
        calls.append(command)
        if command[:2] == ["apt-get", "download"]:
            if "=" in command[2]:
                raise DataError("`apt-get download` failed with exit code 100: E: Version '1.0-1' not found")
            (cwd / f"{command[2]}_2.0-1_all.deb").write_bytes(b"deb")
        else:
            (Path(command[3]) / "photo.jpg").parent.mkdir(parents=True)

    monkeypatch.setattr(sources, "_run", fake_run)
    source = sources.debian_package("some-wallpapers", {"x": "photo.jpg"}, version="1.0-1")

    root = source.unpack(tmp_path)

    assert source.label == "Debian package some-wallpapers 1.0-1"
    assert [c[:3] for c in calls[:2]] == [["apt-get", "download", "some-wallpapers=1.0-1"],
                                           ["apt-get", "download", "some-wallpapers"]]
    assert calls[2][:2] == ["dpkg", "-x"] and root == tmp_path / "root"


@pytest.mark.skipif(not zoo.data.is_fetched("photos"),
                    reason="photos not fetched: run `zoo data fetch photos` (make test does)")
def test_real_photo_splits_hold_out_whole_photos():
    spec = zoo.data.get_spec("photos")
    names = sorted(spec.files)
    split = spec.patches.split_photos(names)
    fit, val, test = (zoo.data.load("photos", s) for s in ("fit", "val", "test"))
    photos = {name: set(d.labels.tolist()) for name, d in (("fit", fit), ("val", val), ("test", test))}

    assert {names[i] for i in photos["test"]} == set(split["test"])
    assert not photos["fit"] & photos["val"] and not photos["fit"] & photos["test"]
    assert not photos["val"] & photos["test"]
    assert len(photos["fit"] | photos["val"] | photos["test"]) == len(names)
    assert len(test) == spec.patches.crops_per_photo("test") * len(split["test"])
    assert len(fit) + len(val) == spec.patches.crops_per_photo("train") * len(split["train"])

# --- batching ---------------------------------------------------------------------------------


def grey_set(n: int = 50, value: int = 0) -> ImageDataset:
    images = torch.full((n, 1, 4, 4), value, dtype=torch.uint8)
    if not value:
        images += torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1)
    return ImageDataset(images, torch.arange(n), name="grey", split="train", checksum="-")


def collect(loader: Batches) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def test_batches_are_deterministic_per_seed_and_epoch():
    data = grey_set()
    a, b, c = (Batches(data, 8, seed=s) for s in (3, 3, 4))

    first, again, other = collect(a), collect(b), collect(c)
    a.set_epoch(1)
    next_epoch = collect(a)

    assert len(first) == len(a) == 7 and first[-1][0].shape == (2, 1, 4, 4)
    for (x1, y1), (x2, y2) in zip(first, again):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    order = torch.cat([y for _, y in first])
    assert sorted(order.tolist()) == list(range(50))
    assert not torch.equal(order, torch.cat([y for _, y in other]))
    assert not torch.equal(order, torch.cat([y for _, y in next_epoch]))
    x, y = first[0]
    assert x.dtype == torch.float32 and torch.allclose(x[:, 0, 0, 0] * 255, y.float())


def test_batches_shard_like_distributed_sampler():
    data = grey_set(n=10)
    shards = [Batches(data, 2, seed=0, rank=r, world_size=3, drop_last=False) for r in range(3)]

    served = [torch.cat([y for _, y in shard]) for shard in shards]

    assert [len(s) for s in served] == [4, 4, 4]
    assert set(torch.cat(served).tolist()) == set(range(10))
    assert len(Batches(data, 3, rank=0, world_size=3, drop_last=True)) == 1
    with pytest.raises(ValueError, match="rank 3 is outside world_size 3"):
        Batches(data, 2, rank=3, world_size=3)


def test_dynamic_binarization_samples_bernoulli_of_intensity():
    data = grey_set(n=400, value=77)  # intensity 77 / 255 ~ 0.302
    loader = Batches(data, 100, seed=0, dynamic_binarize=True)

    batches = collect(loader)
    again = collect(loader)
    loader.set_epoch(1)
    redrawn = collect(loader)

    x = torch.cat([b for b, _ in batches])
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    assert abs(x.mean().item() - 77 / 255) < 0.02
    assert all(torch.equal(p, q) for (p, _), (q, _) in zip(batches, again))
    assert not torch.equal(x, torch.cat([b for b, _ in redrawn]))


def test_batches_reject_float_images():
    floats = torch.utils.data.TensorDataset(torch.zeros(4, 1, 2, 2), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="images must be uint8"):
        Batches(floats, 2)


# --- command line ---------------------------------------------------------------------------------


def test_cli_list_and_fetch(data_home, monkeypatch):
    import zoo.cli.data  # noqa: F401  (registers `zoo data`)
    from zoo.cli.app import main

    files = tiny_idx_files()
    register(monkeypatch, idx_spec("mnist", {n: sha(c) for n, c in files.items()},
                                   writing_source("registry package", files)))
    runner = CliRunner()

    before = runner.invoke(main, ["data", "list"])
    fetched = runner.invoke(main, ["data", "fetch", "mnist"])
    after = runner.invoke(main, ["data", "list", "--json"])

    assert before.exit_code == 0 and "fashion-mnist" in before.output and "photos" in before.output
    assert fetched.exit_code == 0, fetched.output
    assert "t10k-labels-idx1-ubyte: sha256 ok" in fetched.output
    assert "mnist: ready in" in fetched.output
    assert '"fetched": true' in after.output
    unknown = runner.invoke(main, ["data", "fetch", "cifar"])
    assert unknown.exit_code == 2 and "cifar" in unknown.output


# --- the real MNIST, through the same loader users call ------------------------------------------


@pytest.mark.skipif(not zoo.data.is_fetched("mnist"),
                    reason="real MNIST not fetched: run `zoo data fetch mnist` (make test does)")
def test_real_mnist_through_user_loader():
    train, test = zoo.data.load("mnist"), zoo.data.load("mnist", "test")

    assert len(train) == 60000 and len(test) == 10000
    assert train.images.shape == (60000, 1, 28, 28)
    assert train.labels[:5].tolist() == [5, 0, 4, 1, 9]
    assert abs(train.images.float().mean().item() / 255 - 0.1307) < 1e-3
    assert torch.bincount(train.labels).tolist()[:2] == [5923, 6742]


@pytest.mark.skipif(not zoo.data.is_fetched("mnist"),
                    reason="real MNIST not fetched: run `zoo data fetch mnist` (make test does)")
def test_real_mnist_validation_split_is_55k_plus_5k():
    fit, val = zoo.data.load("mnist", "fit"), zoo.data.load("mnist", "val")

    assert len(fit) == 55000 and len(val) == 5000
    assert val.selection["val_indices_sha256"] == zoo.data.get_spec("mnist").validation.val_sha256
    assert not set(fit.source_indices.tolist()) & set(val.source_indices.tolist())
    counts = torch.bincount(val.labels, minlength=10)
    assert counts.min() > 400 and counts.max() < 600  # a random draw: every digit is there, roughly evenly


@pytest.mark.skipif(not zoo.data.is_fetched("photos"),
                    reason="photos not fetched: run `zoo data fetch photos` (make test does)")
def test_real_photos_validation_holds_out_whole_training_photos():
    train, fit, val, test = (zoo.data.load("photos", s) for s in ("train", "fit", "val", "test"))
    photos = {name: set(d.labels.tolist()) for name, d in (("fit", fit), ("val", val), ("test", test))}

    assert len(fit) + len(val) == len(train) and len(photos["val"]) == zoo.data.get_spec("photos").validation.groups
    assert not photos["val"] & photos["fit"] and not photos["val"] & photos["test"]
