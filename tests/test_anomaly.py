"""Anomaly detection: the calibrated threshold (zoo anomaly fit/score), its file, the card, the .mar and served verdicts.

Most tests use a tiny registered dataset and a tiny fresh model, so they need no download;
the end-to-end verdicts of a trained model use the bundled denoising-ae-mnist and MNIST
(skipped when MNIST is not fetched). One test starts a real TorchServe.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import zoo
import zoo.data
from tests.conftest import ok, zoo_cli
from tests.handler_fixtures import new_handler, run
from tests.serving_fixtures import b64, png_bytes, post
from zoo import anomaly
from zoo.anomaly import Calibration, CalibrationError
from zoo.data.registry import DatasetSpec
from zoo.data.validation import ValidationSplit

torch.set_num_threads(1)
TINY = {"channels": [4, 8], "hidden": 0, "latent_dim": 4}


# --------------------------------------------------------------------------------------------
# Helpers and fixtures


def fails(*args) -> str:
    result = zoo_cli(*args)
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit), result.output  # no traceback
    return " ".join(result.output.split())


def listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def strokes(n: int, seed: int, size: int = 28) -> np.ndarray:
    """Bar-like greyscale images, uint8 (N, 1, size, size)."""
    g = np.random.default_rng(seed)
    images = np.zeros((n, 1, size, size), np.uint8)
    for i in range(n):
        r, c = g.integers(size // 7, size // 2, 2)
        images[i, 0, r:r + size // 2, c:c + 3] = g.integers(150, 256)
        images[i, 0, r:r + 3, c:c + size // 3] = g.integers(150, 256)
    return images


def tiny_spec(name: str = "anomaly-tiny", shape=(1, 28, 28), validation=True) -> DatasetSpec:
    """A dataset with no files: ``read`` makes 300 training images (labels 0-2) and 60 test images."""
    def read(directory, split):
        n = 300 if split == "train" else 60
        images = strokes(n, 1 if split == "train" else 2, shape[1])
        return images[:, :, :shape[1], :shape[2]].copy(), (np.arange(n) % 3).astype(np.int64)

    return DatasetSpec(name=name, description="synthetic strokes", shape=shape, files={}, sources=(), read=read,
                       validation=ValidationSplit(count=120, seed=0) if validation else None)


@pytest.fixture
def tiny_data(monkeypatch, tmp_path):
    monkeypatch.setenv("ZOO_DATA", str(tmp_path / "data"))
    spec = tiny_spec()
    monkeypatch.setitem(zoo.data.DATASETS, spec.name, spec)
    return spec.name


def fresh(folder: Path, architecture: str = "denoising-ae", seed: int = 0, config: dict | None = None) -> Path:
    torch.manual_seed(seed)
    return zoo.create(architecture, **(TINY if config is None else config)).save_pretrained(folder)


def own_scores(model, x: torch.Tensor) -> torch.Tensor:
    return model.run_task("anomaly-score", x)


def write_png(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(pixels.reshape(pixels.shape[-2:])).save(path)
    return path


def calibration_for(folder: Path, threshold: float, score: str = "anomaly-score", fpr: float = 0.05) -> Calibration:
    """A calibration of ``folder``'s own weights with a chosen threshold (for tests of what reads it)."""
    model = zoo.load(folder)
    return Calibration(threshold=threshold, fpr=fpr, task="anomaly-score",
                       weights_sha256=anomaly._weights_sha256(folder), architecture=model.architecture, n=100,
                       calibration_fpr=fpr, data={"dataset": "anomaly-tiny", "split": "val", "labels": None},
                       score=score, zoo_version=zoo.__version__)


# --------------------------------------------------------------------------------------------
# The threshold rule and AUROC


def test_the_threshold_is_the_inverted_cdf_quantile():
    scores = list(range(1, 101))  # 1..100
    assert anomaly.quantile_threshold(scores, 0.01) == 99  # one of 100 above it
    assert anomaly.quantile_threshold(scores, 0.05) == 95
    assert anomaly.quantile_threshold(scores[::-1], 0.5) == 50  # order does not matter
    assert anomaly.quantile_threshold([3.0], 0.01) == 3.0
    assert anomaly.quantile_threshold(list(range(1, 51)), 0.01) == 50  # fpr * n < 1: the largest score
    rng = np.random.default_rng(0)
    for n in (7, 100, 523, 1000):
        values = rng.normal(size=n).astype(np.float32)
        for fpr in (0.001, 0.01, 0.05, 0.1, 0.5):
            t = anomaly.quantile_threshold(values.tolist(), fpr)
            assert t == float(np.quantile(values.astype(np.float64), 1 - fpr, method="inverted_cdf"))
            above = int((values > t).sum())
            assert above <= fpr * n  # never more false positives on the calibration data than asked for
            assert above + 1 > fpr * n or t == values.max()  # and the smallest such threshold


def test_the_threshold_refuses_bad_rates_and_scores():
    for fpr in (0, 1, -0.1, 1.5, float("nan"), True, "0.01"):
        with pytest.raises(CalibrationError, match="strictly between 0 and 1"):
            anomaly.quantile_threshold([1.0, 2.0], fpr)
    with pytest.raises(CalibrationError, match="1 of 3 calibration scores are not finite"):
        anomaly.quantile_threshold([1.0, float("nan"), 2.0], 0.1)
    with pytest.raises(CalibrationError, match="at least one"):
        anomaly.quantile_threshold([], 0.1)


def test_a_verdict_is_above_the_threshold_or_not_finite():
    assert anomaly.verdicts([0.5, 1.0, 1.0000001, float("nan"), float("inf"), None, -5.0], 1.0) == \
        [False, False, True, True, True, True, False]


def test_auroc_matches_hand_computed_cases():
    assert anomaly.auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == 0.75  # 3 of 4 pairs in order
    assert anomaly.auroc([1.0, 1.0, 2.0], [False, True, True]) == 0.75  # a tie counts one half
    assert anomaly.auroc([1, 2, 3], [True, False, False]) == 0.0
    assert anomaly.auroc([5, 5, 5, 5], [True, False, True, False]) == 0.5
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 20, 300).astype(float)  # many ties
    labels = rng.random(300) < 0.3
    pos, neg = scores[labels], scores[~labels]
    pairs = (pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()
    assert anomaly.auroc(scores, labels) == pytest.approx(pairs / (len(pos) * len(neg)), abs=1e-12)
    with pytest.raises(ValueError, match="one anomalous and one normal"):
        anomaly.auroc([1, 2], [True, True])


def test_relative_blurred_error_follows_its_formula():
    x = torch.zeros(1, 1, 9, 9)
    r = x.clone()
    r[0, 0, 4, 4] = 1.0  # one bright pixel the input does not have
    kernel = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256.0
    expected = (kernel ** 2).sum() / 1.0  # the blurred residual is the kernel; energies: 0 + 1
    assert anomaly.relative_blurred_error(x, r).item() == pytest.approx(expected, rel=1e-6)
    same = torch.rand(2, 3, 8, 8)
    assert anomaly.relative_blurred_error(same, same).tolist() == [0.0, 0.0]
    # the same image shifted by one pixel costs less than a different one of the same ink
    a = torch.zeros(1, 1, 16, 16)
    a[..., 4:12, 6:8] = 1
    shifted, moved = torch.roll(a, 1, dims=3), torch.zeros_like(a)
    moved[..., 6:8, 4:12] = 1
    assert anomaly.relative_blurred_error(a, shifted) < anomaly.relative_blurred_error(a, moved)


# --------------------------------------------------------------------------------------------
# zoo anomaly fit


def test_fit_sets_the_threshold_from_the_val_split_and_the_file_round_trips(tmp_path, tiny_data):
    folder = fresh(tmp_path / "m")
    ok("anomaly", "fit", folder, "--data", tiny_data, "--fpr", "0.05", "--label", "1", "--label", "2")
    path = folder / "anomaly.json"
    stored = json.loads(path.read_text())

    val = zoo.data.load(tiny_data, "val")
    keep = (val.labels == 1) | (val.labels == 2)
    model = zoo.load(folder)
    expected_scores = np.sort(own_scores(model, val.images[keep].float() / 255).numpy())
    n = len(expected_scores)
    assert stored["n"] == n == int(keep.sum())
    assert stored["threshold"] == float(expected_scores[math.ceil(0.95 * n) - 1])
    assert stored["fpr"] == 0.05 and stored["task"] == "anomaly-score" and stored["score"] == "anomaly-score"
    assert stored["data"]["split"] == "val" and stored["data"]["labels"] == [1, 2]
    assert stored["data"]["checksum"] == val.checksum
    assert stored["data"]["images_sha256"] == __import__("hashlib").sha256(
        val.images[keep].contiguous().numpy().tobytes()).hexdigest()
    assert stored["model"]["weights_sha256"] == anomaly._weights_sha256(folder)
    assert stored["quantiles"]["0"] == float(expected_scores[0]) and stored["quantiles"]["1"] == \
        float(expected_scores[-1])
    assert stored["calibration_fpr"] == pytest.approx(float((expected_scores > stored["threshold"]).mean()))
    assert stored["command"].startswith("zoo anomaly fit") and stored["zoo_version"] == zoo.__version__

    loaded = anomaly.load_calibration(folder)
    assert loaded.to_dict() == stored
    assert Calibration.from_dict(loaded.to_dict()) == loaded


def test_fit_and_score_with_the_relative_blurred_error(tmp_path, tiny_data):
    folder = fresh(tmp_path / "m")
    ok("anomaly", "fit", folder, "--data", tiny_data, "--fpr", "0.1", "--score", "relative-blurred-error")
    stored = anomaly.load_calibration(folder)
    model = zoo.load(folder)
    x = zoo.data.load(tiny_data, "val").images.float() / 255
    with torch.no_grad():
        expected = np.sort(anomaly.relative_blurred_error(x, model.decode(model.encode(x))).numpy())
    assert stored.score == "relative-blurred-error" and stored.n == len(expected)
    assert stored.threshold == float(expected[math.ceil(0.9 * len(expected)) - 1])
    assert "--score relative-blurred-error" in stored.command and "5x5 binomial" in stored.score_description

    images = strokes(4, 21)
    files = [write_png(tmp_path / f"in{i}.png", images[i]) for i in range(4)]
    x = torch.from_numpy(images).float() / 255
    with torch.no_grad():
        scores = anomaly.relative_blurred_error(x, model.decode(model.encode(x))).tolist()
    body = json.loads(ok("anomaly", "score", folder, *files, "--json").output)
    assert body["score"] == "relative-blurred-error"
    assert body["scores"] == pytest.approx(scores, rel=1e-6)
    assert body["anomalous"] == [s > stored.threshold for s in body["scores"]]
    assert "--score goes with --threshold" in fails("anomaly", "score", folder, *files, "--score", "anomaly-score")
    colour = fresh(tmp_path / "c", "colorization-ae", config={"channels": [4]})
    assert "colorize" in fails("anomaly", "fit", colour, "--data", tiny_data, "--score", "relative-blurred-error")


def test_fit_without_a_val_split_holds_out_part_of_train_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_DATA", str(tmp_path / "data"))
    spec = tiny_spec("anomaly-noval", validation=False)
    monkeypatch.setitem(zoo.data.DATASETS, spec.name, spec)
    folder = fresh(tmp_path / "m")
    result = ok("anomaly", "fit", folder, "--data", spec.name, "--fpr", "0.1")
    assert "no validation split" in " ".join(result.output.split())
    stored = json.loads((folder / "anomaly.json").read_text())
    assert stored["data"]["split"] == "train" and stored["n"] == 30  # 10% of 300
    assert "no validation split" in stored["data"]["note"]
    chosen = anomaly.holdout_indices(300)
    assert chosen.tolist() == anomaly.holdout_indices(300).tolist() and len(set(chosen.tolist())) == 30


def test_fit_refusals_name_the_problem_and_write_nothing(tmp_path, tiny_data):
    folder = fresh(tmp_path / "m")
    before = listing(folder)
    assert "refusing to calibrate on the test split" in fails("anomaly", "fit", folder, "--data", tiny_data,
                                                             "--split", "test")
    assert "strictly between 0 and 1" in fails("anomaly", "fit", folder, "--data", tiny_data, "--fpr", "1")
    assert "label(s) [7]" in fails("anomaly", "fit", folder, "--data", tiny_data, "--label", "7")
    assert "unknown split 'nope'" in fails("anomaly", "fit", folder, "--data", tiny_data, "--split", "nope")
    assert "no-such-data" in fails("anomaly", "fit", folder, "--data", "no-such-data")
    assert listing(folder) == before

    ok("anomaly", "fit", folder, "--data", tiny_data)
    calibrated = listing(folder)
    assert "already exists; pass --overwrite" in fails("anomaly", "fit", folder, "--data", tiny_data, "--fpr", "0.2")
    assert listing(folder) == calibrated
    ok("anomaly", "fit", folder, "--data", tiny_data, "--fpr", "0.2", "--overwrite")
    assert json.loads((folder / "anomaly.json").read_text())["fpr"] == 0.2

    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    assert "is not an empty folder" in fails("anomaly", "fit", folder, "--data", tiny_data, "--out", other)
    assert sorted(p.name for p in other.iterdir()) == ["keep.txt"]


def test_fit_refuses_data_of_another_shape_and_models_without_the_task(tmp_path, monkeypatch, tiny_data):
    spec = tiny_spec("anomaly-small", shape=(1, 8, 8))
    monkeypatch.setitem(zoo.data.DATASETS, spec.name, spec)
    folder = fresh(tmp_path / "m")
    assert "are 1x8x8, but the model takes 1x28x28" in fails("anomaly", "fit", folder, "--data", spec.name)
    assert not (folder / "anomaly.json").exists()
    colour = fresh(tmp_path / "c", "colorization-ae", config={"channels": [4]})
    message = fails("anomaly", "fit", colour, "--data", tiny_data)
    assert "anomaly-score" in message and "colorize" in message


def test_a_registered_model_is_calibrated_into_a_copy(tmp_path, tiny_data, monkeypatch):
    name = "denoising-ae-mnist"
    message = fails("anomaly", "fit", name, "--data", tiny_data)
    assert "registered model" in message and "--out" in message
    out = tmp_path / "dae"
    ok("anomaly", "fit", name, "--data", tiny_data, "--out", out)
    from zoo.api import checkpoint_folder

    source = checkpoint_folder(name)
    assert not (source / "anomaly.json").exists()
    for item in source.iterdir():
        if item.is_file():
            assert (out / item.name).read_bytes() == item.read_bytes()
    assert anomaly.load_calibration(out).weights_sha256 == zoo.info(name)["sha256"]


# --------------------------------------------------------------------------------------------
# zoo anomaly score


def test_score_gives_verdicts_from_the_calibration_in_every_format(tmp_path, tiny_data):
    folder = fresh(tmp_path / "m")
    model = zoo.load(folder)
    images = strokes(6, 9)
    files = [write_png(tmp_path / f"in{i}.png", images[i]) for i in range(len(images))]
    scores = own_scores(model, torch.from_numpy(images).float() / 255).numpy()
    threshold = float(np.sort(scores)[2])  # three at or below it, three above
    anomaly.write_calibration(folder, calibration_for(folder, threshold))
    expected = [bool(s > threshold) for s in scores]
    assert sum(expected) == 3

    ok("anomaly", "score", folder, *files, "--out", tmp_path / "v.csv")
    rows = list(csv.reader((tmp_path / "v.csv").open()))
    assert rows[0] == ["file", "anomaly-score", "anomalous"]
    assert [r[0] for r in rows[1:]] == [str(f) for f in files]
    assert [np.float32(r[1]) for r in rows[1:]] == list(scores)  # float32 values round trip exactly
    assert [r[2] == "true" for r in rows[1:]] == expected

    ok("anomaly", "score", folder, *files, "--out", tmp_path / "v.json")
    body = json.loads((tmp_path / "v.json").read_text())
    assert body["anomalous"] == expected and body["threshold"] == threshold and body["fpr"] == 0.05
    assert body["threshold_source"] == "anomaly.json" and body["scores"] == [float(s) for s in scores]

    printed = json.loads(ok("anomaly", "score", folder, *files, "--json").output)
    assert printed["anomalous"] == expected
    table = ok("anomaly", "score", folder, *files).output.splitlines()
    rows = [line.split() for line in table if line.startswith(str(tmp_path))]
    assert [r[-1] == "anomalous" for r in rows] == expected and "3 of 6 anomalous" in table[-1]

    # --threshold overrides the stored one
    everything = json.loads(ok("anomaly", "score", folder, *files, "--json", "--threshold", "-1").output)
    assert everything["anomalous"] == [True] * 6 and everything["threshold_source"] == "--threshold"
    assert "already exists" in fails("anomaly", "score", folder, *files, "--out", tmp_path / "v.json")
    assert "name a .csv or .json file" in fails("anomaly", "score", folder, *files, "--out", tmp_path / "v.npy")


def test_score_refuses_without_calibration_and_for_other_weights(tmp_path, tiny_data):
    a, b = fresh(tmp_path / "a", seed=0), fresh(tmp_path / "b", seed=1)
    image = write_png(tmp_path / "x.png", strokes(1, 3)[0])
    message = fails("anomaly", "score", a, image)
    assert "no anomaly calibration" in message and "zoo anomaly fit" in message and "--threshold" in message
    assert not json.loads(ok("anomaly", "score", a, image, "--json", "--threshold", "1e9").output)["anomalous"][0]

    ok("anomaly", "fit", a, "--data", tiny_data)
    shutil.copy(a / "anomaly.json", b / "anomaly.json")  # b's weights differ
    message = fails("anomaly", "score", b, image)
    assert "was calibrated for weights with sha256" in message and "Recalibrate" in message
    with pytest.raises(CalibrationError, match=anomaly._weights_sha256(b)):
        anomaly.load_calibration(b)
    model_a = zoo.load(a)
    torch.manual_seed(5)
    with torch.no_grad():
        for p in model_a.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model_a.save_pretrained(a)  # retrained weights: the old calibration no longer applies
    assert "was calibrated for weights" in fails("anomaly", "score", a, image)


@pytest.mark.parametrize("content, words", [
    ("{not json", "is not valid JSON"),
    ('{"format_version": 2}', "format_version 2"),
    ('{"format_version": 1, "model": {"architecture": "denoising-ae", "weights_sha256": "%s"}, '
     '"task": "anomaly-score", "threshold": "high", "fpr": 0.01, "n": 5}', '"threshold" must be a finite number'),
    ('{"format_version": 1, "model": {"architecture": "denoising-ae", "weights_sha256": "%s"}, '
     '"task": "anomaly-score", "threshold": 1.0, "fpr": 0.01, "n": 5, "score": "magic"}', "'magic' is not one"),
])
def test_a_broken_calibration_file_is_refused_by_name(tmp_path, content, words):
    folder = fresh(tmp_path / "m")
    if "%s" in content:
        content = content % anomaly._weights_sha256(folder)
    (folder / "anomaly.json").write_text(content)
    with pytest.raises(CalibrationError) as caught:
        anomaly.load_calibration(folder)
    assert words in str(caught.value) and "anomaly.json" in str(caught.value)
    image = write_png(tmp_path / "x.png", strokes(1, 3)[0])
    assert words in fails("anomaly", "score", folder, image)


@pytest.mark.skipif(not zoo.data.is_fetched("mnist"), reason="MNIST is not fetched (zoo data fetch mnist)")
def test_a_trained_model_passes_digits_and_flags_noise(tmp_path):
    out = tmp_path / "dae"
    ok("anomaly", "fit", "denoising-ae-mnist", "--data", "mnist", "--fpr", "0.01", "--out", out)
    calibration = anomaly.load_calibration(out)
    val = zoo.data.load("mnist", "val")
    assert calibration.n == len(val) == 5000
    model = zoo.load(out)
    scores = anomaly.score_images(model, val.images)
    assert (scores > calibration.threshold).sum() <= 50  # at most 1% of the held-out digits flagged
    typical = val.images[int(np.argsort(scores)[len(scores) // 2])][0].numpy()  # a median digit
    noise = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    blank = np.full((28, 28), 255, np.uint8)
    files = [write_png(tmp_path / n, a) for n, a in (("digit.png", typical), ("noise.png", noise),
                                                      ("white.png", blank))]
    body = json.loads(ok("anomaly", "score", out, *files, "--json").output)
    assert body["anomalous"] == [False, True, True], body
    assert body["scores"][1] > 3 * calibration.threshold


# --------------------------------------------------------------------------------------------
# The card and the archive


def test_the_card_shows_a_stored_threshold(tmp_path, tiny_data):
    from zoo.cards import render_card

    folder = fresh(tmp_path / "m")
    assert "Anomaly threshold" not in render_card(folder)
    ok("anomaly", "fit", folder, "--data", tiny_data, "--fpr", "0.05", "--label", "1")
    stored = anomaly.load_calibration(folder)
    card = render_card(folder)
    assert "## Anomaly threshold" in card
    assert f"above {stored.threshold:.6g}**" in card
    assert "| Target false-positive rate | 0.05 " in card
    assert f"`{tiny_data}`, split `val`, label 1: {stored.n} held-out normal images" in card
    assert stored.data["images_sha256"] in card and "zoo anomaly fit" in card
    shutil.copy(folder / "anomaly.json", fresh(tmp_path / "other", seed=3) / "anomaly.json")
    with pytest.raises(CalibrationError, match="was calibrated for weights"):
        render_card(tmp_path / "other")


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    """Three archives of one tiny model, unpacked: calibrated on its own score, on relative-blurred-error, and none."""
    from zoo.serving import PackageOptions, package

    tmp = tmp_path_factory.mktemp("anomaly-archives")
    folder = fresh(tmp / "calibrated")
    model = zoo.load(folder)
    inputs = torch.from_numpy(strokes(4, 11)).float() / 255
    scores = own_scores(model, inputs)
    own = calibration_for(folder, float(scores.sort().values[1]))  # inputs 2 of 4 above it
    with torch.no_grad():
        rbe_scores = anomaly.relative_blurred_error(inputs, model.decode(model.encode(inputs)))
    blurred = calibration_for(folder, float(rbe_scores.sort().values[2]), score="relative-blurred-error")
    result = {"model": model, "inputs": inputs, "scores": scores, "rbe_scores": rbe_scores}
    for name, calibration in (("own", own), ("blurred", blurred), ("plain", None)):
        copy = tmp / name
        shutil.copytree(folder, copy)
        if calibration is not None:
            anomaly.write_calibration(copy, calibration)
        mar = package(copy, tmp / "store", PackageOptions(batch_size=8, max_batch_delay=5))
        unpacked = tmp / f"unpacked-{name}"
        with zipfile.ZipFile(mar) as z:
            z.extractall(unpacked)
        result[name] = {"mar": mar, "dir": unpacked, "calibration": calibration}
    return result


def test_the_archive_carries_the_calibration(archives):
    for name in ("own", "blurred"):
        with zipfile.ZipFile(archives[name]["mar"]) as z:
            stored = json.loads(z.read("anomaly.json"))
            manifest = json.loads(z.read("zoo-serving.json"))
        assert stored == archives[name]["calibration"].to_dict()
        assert manifest["anomaly_calibration"] == "anomaly.json"
    with zipfile.ZipFile(archives["plain"]["mar"]) as z:
        assert "anomaly.json" not in z.namelist()
        assert json.loads(z.read("zoo-serving.json"))["anomaly_calibration"] is None


def test_packaging_refuses_a_calibration_of_other_weights(tmp_path):
    from zoo.serving import package
    from zoo.serving.package import ServingError

    a, b = fresh(tmp_path / "a"), fresh(tmp_path / "b", seed=1)
    anomaly.write_calibration(b, calibration_for(a, 1.0))
    with pytest.raises(ServingError, match="was calibrated for weights"):
        package(b, tmp_path / "store")
    assert not (tmp_path / "store" / "b.mar").exists()


def test_a_cached_archive_is_rebuilt_when_the_calibration_changes(tmp_path):
    from zoo.serving.package import package_cached

    folder = fresh(tmp_path / "m")
    first = package_cached(folder, tmp_path / "build")
    built = first.stat().st_mtime_ns
    assert package_cached(folder, tmp_path / "build").stat().st_mtime_ns == built  # nothing changed: reused
    anomaly.write_calibration(folder, calibration_for(folder, 0.5))
    second = package_cached(folder, tmp_path / "build")
    with zipfile.ZipFile(second) as z:
        assert json.loads(z.read("anomaly.json"))["threshold"] == 0.5
    anomaly.write_calibration(folder, calibration_for(folder, 0.25))
    with zipfile.ZipFile(package_cached(folder, tmp_path / "build")) as z:
        assert json.loads(z.read("anomaly.json"))["threshold"] == 0.25
    (folder / "anomaly.json").unlink()
    with zipfile.ZipFile(package_cached(folder, tmp_path / "build")) as z:
        assert "anomaly.json" not in z.namelist()


def _images(archives, which):
    return [png_bytes((archives["inputs"][i] * 255).round().to(torch.uint8)) for i in which]


def test_served_replies_carry_the_verdict_in_native_v1_and_v2(archives):
    d = archives["own"]["dir"]
    handler = new_handler(d)
    threshold = archives["own"]["calibration"].threshold
    scores = archives["scores"].tolist()
    expected = [s > threshold for s in scores]
    assert expected.count(True) == 2
    pngs = _images(archives, range(4))

    native, statuses = run(handler, d, [{"body": {"task": "anomaly-score", "image": b64(p)}} for p in pngs])
    assert statuses == [200] * 4
    for reply, score, verdict in zip(native, scores, expected):
        assert set(reply) == {"model", "task", "scalar", "anomalous", "threshold"}
        assert reply["scalar"] == pytest.approx(score, rel=1e-5) and reply["anomalous"] is verdict
        assert reply["threshold"] == threshold

    (v1,), statuses = run(handler, d, [{"body": {"instances": [{"task": "anomaly-score", "b64": b64(p)}
                                                               for p in pngs]}}])
    assert statuses == [200]
    assert [p["anomalous"] for p in v1["predictions"]] == expected
    assert all(p["threshold"] == threshold for p in v1["predictions"])

    body = {"parameters": {"task": "anomaly-score"},
            "inputs": [{"name": "image", "shape": [4], "datatype": "BYTES", "data": [b64(p) for p in pngs]}]}
    (v2,), _ = run(handler, d, [{"body": body}])
    score_out, verdict_out = v2["outputs"]
    assert score_out["name"] == "anomaly-score" and score_out["datatype"] == "FP32" and score_out["shape"] == [4]
    assert verdict_out == {"name": "anomalous", "shape": [4], "datatype": "BOOL", "data": expected,
                           "parameters": {"threshold": threshold}}
    only, _ = run(handler, d, [{"body": {**body, "outputs": [{"name": "anomalous"}]}}])
    assert [o["name"] for o in only[0]["outputs"]] == ["anomalous"]
    wrong, statuses = run(handler, d, [{"body": {**body, "outputs": [{"name": "verdict"}]}}])
    assert statuses == [400] and "'anomaly-score', 'anomalous'" in wrong[0]["error"]


def test_a_calibration_on_another_score_is_what_the_server_computes(archives):
    d = archives["blurred"]["dir"]
    handler = new_handler(d)
    threshold = archives["blurred"]["calibration"].threshold
    expected_scores = archives["rbe_scores"].tolist()
    replies, _ = run(handler, d, [{"body": {"task": "anomaly-score", "image": b64(p)}}
                                  for p in _images(archives, range(4))])
    assert [r["scalar"] for r in replies] == pytest.approx(expected_scores, rel=1e-5)
    verdicts = [r["anomalous"] for r in replies]
    assert verdicts == [s > threshold for s in expected_scores] and verdicts.count(True) == 1


def test_replies_without_a_calibration_are_unchanged(archives):
    d = archives["plain"]["dir"]
    handler = new_handler(d)
    png = _images(archives, [0])[0]
    (reply,), _ = run(handler, d, [{"body": {"task": "anomaly-score", "image": b64(png)}}])
    assert set(reply) == {"model", "task", "scalar"}
    body = {"parameters": {"task": "anomaly-score"},
            "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64(png)]}]}
    (v2,), _ = run(handler, d, [{"body": body}])
    assert [o["name"] for o in v2["outputs"]] == ["anomaly-score"]
    (wrong,), statuses = run(handler, d, [{"body": {**body, "outputs": [{"name": "anomalous"}]}}])
    assert statuses == [400] and "has one output" in wrong["error"]


def test_an_archive_with_a_foreign_calibration_does_not_load(archives, tmp_path):
    from zoo_handlers.service import ZooService

    d = tmp_path / "tampered"
    shutil.copytree(archives["own"]["dir"], d)
    data = json.loads((d / "anomaly.json").read_text())
    data["model"]["weights_sha256"] = "0" * 64
    (d / "anomaly.json").write_text(json.dumps(data))
    with pytest.raises(RuntimeError, match="anomaly calibration is unusable.*was calibrated for weights"):
        ZooService.from_model_dir(d)


def test_torchserve_replies_with_the_verdict(archives, tmp_path):
    from zoo.serving import server

    state = server.start([archives["own"]["mar"]], tmp_path / "serve", batch_size=8, max_batch_delay=20, workers=1,
                         timeout=300)
    try:
        url = f"{state.inference_url}/predictions/{archives['own']['mar'].stem}"
        threshold = archives["own"]["calibration"].threshold
        expected = [s > threshold for s in archives["scores"].tolist()]
        pngs = _images(archives, range(4))
        native = [post(url, json.dumps({"task": "anomaly-score", "image": b64(p)}).encode(), "application/json",
                       state.headers()) for p in pngs]
        assert [s for s, _ in native] == [200] * 4
        assert [r["anomalous"] for _, r in native] == expected and native[0][1]["threshold"] == threshold
        status, v1 = post(url, json.dumps({"instances": [{"task": "anomaly-score", "b64": b64(p)} for p in pngs]})
                          .encode(), "application/json", state.headers())
        assert status == 200 and [p["anomalous"] for p in v1["predictions"]] == expected
        status, v2 = post(url, json.dumps({"parameters": {"task": "anomaly-score"}, "inputs": [
            {"name": "image", "shape": [4], "datatype": "BYTES", "data": [b64(p) for p in pngs]}]}).encode(),
            "application/json", state.headers())
        assert status == 200
        assert v2["outputs"][1] == {"name": "anomalous", "shape": [4], "datatype": "BOOL", "data": expected,
                                    "parameters": {"threshold": threshold}}
        assert v2["outputs"][0]["data"] == pytest.approx(archives["scores"].tolist(), rel=1e-5)
    finally:
        server.stop(tmp_path / "serve")


def test_kserve_engine_keeps_the_verdict_and_its_threshold(archives):
    """`zoo serve --engine kserve` on a calibrated checkpoint folder: the v2 response keeps the BOOL output's
    threshold parameter, and the model's metadata lists the output."""
    from zoo.serving.kserve_model import ZooKServeModel, v2_response
    from zoo.serving.kserve_server import load_service
    from zoo_handlers.protocols import Request

    folder = archives["own"]["dir"]
    service = load_service(str(folder), "calibrated")
    threshold = archives["own"]["calibration"].threshold
    assert service.calibration is not None and service.calibration.threshold == threshold
    assert {"name": "anomalous", "datatype": "BOOL", "shape": [-1]} in ZooKServeModel("m", service).get_output_types()
    body = {"parameters": {"task": "anomaly-score"},
            "inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": [b64(p) for p in
                                                                                   _images(archives, range(2))]}]}
    reply = json.loads(service.answer([Request(body, "application/json")])[0].body)
    verdict = next(o for o in v2_response(reply, grpc=False).outputs if o.name == "anomalous")
    assert verdict.parameters == {"threshold": threshold}
