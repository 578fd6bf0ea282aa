"""The local commands (zoo sample/reconstruct/denoise/colorize/encode/interpolate/manifold): in-process, no server.

Every output is compared with what the model computes on the same input in this
process: images within 1/255 (they go through 8-bit PNGs), codes exactly.
"""

import base64
import csv
import io
import json
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import zoo
from tests.conftest import ok, zoo_cli
from zoo.cli.local import PROGRESS_MIN, progress_wanted
from zoo.images import ImageInputError, expand_inputs, grid_cell, read_input_image, write_bytes
from zoo.latents import manifold_codes

torch.set_num_threads(1)
PIXEL = 1 / 255 + 1e-6


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = zoo.load(name, device="cpu")
        return cache[name]

    return get


def digits(n: int, seed: int = 0, size: int = 28) -> np.ndarray:
    """Stroke-like greyscale test images, uint8 (N, size, size)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 1, size, size)
    for i in range(n):
        r0, c0 = torch.randint(size // 5, size // 2, (2,), generator=g).tolist()
        images[i, 0, r0:r0 + size // 2, c0:c0 + 3] = 1.0
        images[i, 0, r0:r0 + 3, c0:c0 + size // 3] = 1.0
    images = torch.nn.functional.avg_pool2d(images, 3, 1, 1)
    return (images[:, 0] * 255).round().to(torch.uint8).numpy()


def photos(n: int, seed: int = 0) -> np.ndarray:
    """Smooth colour test images, uint8 (N, 32, 32, 3)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:32, 0:32] / 31.0
    out = []
    for _ in range(n):
        a, b, c = rng.uniform(0.1, 0.9, (3, 3))
        out.append(np.stack([a[i] * x + b[i] * y + c[i] * x * y for i in range(3)], -1).clip(0, 1))
    return (np.stack(out) * 255).round().astype(np.uint8)


def save(folder, arrays, prefix="img", suffix=".png"):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, array in enumerate(arrays):
        path = folder / f"{prefix}{i}{suffix}"
        Image.fromarray(array).save(path)
        paths.append(path)
    return paths


def as_input(path, shape=(1, 28, 28)) -> torch.Tensor:
    """A file read independently of zoo.images: Pillow conversion to the model's mode, floats in [0, 1]."""
    image = Image.open(path).convert("L" if shape[0] == 1 else "RGB")
    array = np.asarray(image, dtype=np.float32).reshape(shape[1], shape[2], shape[0]) / 255
    return torch.from_numpy(array).permute(2, 0, 1)


def read_png(path) -> torch.Tensor:
    array = np.asarray(Image.open(path), dtype=np.float32) / 255
    return torch.from_numpy(array.reshape(*array.shape[:2], -1)).permute(2, 0, 1)


def fails(*args):
    result = zoo_cli(*args)
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit), result.output  # an error, no traceback
    return " ".join(result.output.split())  # one line, whatever the terminal wrapping


def listing(folder):
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


# --------------------------------------------------------------------------------------------
# Image -> image tasks


def test_reconstruct_a_folder_writes_what_the_model_computes(tmp_path, models):
    inputs = save(tmp_path / "digits", digits(5))
    result = ok("reconstruct", "conv-vae-mnist", tmp_path / "digits", "--out", tmp_path / "out",
                "--grid", tmp_path / "grid.png", "--scale", "1", "--json")
    model = models("conv-vae-mnist")
    x = torch.stack([as_input(p) for p in inputs])
    expected = model.reconstruct(x)
    assert listing(tmp_path / "out") == [f"img{i}.png" for i in range(5)]
    for i, path in enumerate(inputs):
        got = read_png(tmp_path / "out" / f"{path.stem}.png")
        assert got.shape == (1, 28, 28) and (got - expected[i]).abs().max() <= PIXEL
    summary = json.loads(result.stdout)
    assert summary["task"] == "reconstruct" and summary["count"] == 5 and summary["output_shape"] == [1, 28, 28]
    assert [f["input"] for f in summary["files"]] == [str(p) for p in inputs]
    # the grid: inputs in the top row, their outputs below
    grid = np.asarray(Image.open(tmp_path / "grid.png").convert("L"))
    assert grid.shape == (2 + 2 * 30, 2 + 5 * 30)
    for i in range(5):
        assert np.array_equal(grid_cell(grid, 0, i, 28, 28), np.asarray(Image.open(inputs[i])))
        assert np.array_equal(grid_cell(grid, 1, i, 28, 28), np.asarray(Image.open(tmp_path / "out" / f"img{i}.png")))


def test_denoise_expands_globs_itself_and_batches(tmp_path, models):
    noisy = digits(5, seed=1)
    noisy = np.clip(noisy.astype(int) + np.random.default_rng(0).integers(-60, 60, noisy.shape), 0, 255)
    inputs = save(tmp_path / "noisy", noisy.astype(np.uint8))
    save(tmp_path / "noisy", digits(2, seed=2), prefix="other")  # not matched by the glob
    extra = save(tmp_path / "more", digits(1, seed=3), prefix="extra", suffix=".jpg")
    pattern = str(tmp_path / "noisy" / "img*.png")  # unexpanded, as a shell that does not expand passes it
    ok("denoise", "denoising-ae-mnist", pattern, extra[0], "--out", tmp_path / "out", "--batch-size", "2")
    assert listing(tmp_path / "out") == ["extra0.png", *(f"img{i}.png" for i in range(5))]
    model = models("denoising-ae-mnist")
    for path in [*inputs, *extra]:
        expected = model.denoise(as_input(path)[None])[0]
        assert (read_png(tmp_path / "out" / f"{path.stem}.png") - expected).abs().max() <= PIXEL


def test_colorize_reads_colour_files_as_grey_and_writes_rgb(tmp_path, models):
    arrays = photos(3)
    inputs = save(tmp_path / "photos", arrays[:2]) + save(tmp_path / "photos", arrays[2:], prefix="jpeg", suffix=".jpg")
    ok("colorize", "colorization-ae-photos", tmp_path / "photos", "--out", tmp_path / "out",
       "--grid", tmp_path / "grid.png", "--scale", "1")
    model = models("colorization-ae-photos")
    assert model.input_shape == (1, 32, 32)
    for path in inputs:
        expected = model.colorize(as_input(path, (1, 32, 32))[None])[0]
        got = read_png(tmp_path / "out" / f"{path.stem}.png")
        assert got.shape == (3, 32, 32) and (got - expected).abs().max() <= PIXEL
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.shape == (2 + 2 * 34, 2 + 3 * 34, 3)
    top = grid_cell(grid, 0, 0, 32, 32)  # the grey input, shown with three equal channels
    assert np.array_equal(top[..., 0], np.asarray(Image.open(inputs[0]).convert("L"))) and (top.std(-1) == 0).all()


def test_a_checkpoint_folder_works_like_a_registered_name(tmp_path):
    model = zoo.create("dense-vae", image_size=8, hidden=[16], latent_dim=3).eval()
    model.save_pretrained(tmp_path / "tiny")
    inputs = save(tmp_path / "in", digits(3, size=8))
    ok("reconstruct", tmp_path / "tiny", *inputs, "--out", tmp_path / "out")
    for path in inputs:
        expected = model.reconstruct(as_input(path, (1, 8, 8))[None])[0]
        assert (read_png(tmp_path / "out" / f"{path.stem}.png") - expected).abs().max() <= PIXEL


def test_outputs_are_the_bytes_the_serving_handler_sends(tmp_path, models):
    """The PNGs equal `zoo predict`'s replies, computed by the handler's service in process (no TorchServe)."""
    from zoo_handlers.options import Options
    from zoo_handlers.protocols import Request
    from zoo_handlers.service import ZooService

    service = ZooService(models("conv-vae-mnist"), torch.device("cpu"), Options(warmup=False), name="conv-vae-mnist")
    inputs = save(tmp_path / "in", digits(3, seed=4))
    ok("reconstruct", "conv-vae-mnist", tmp_path / "in", "--out", tmp_path / "out")
    replies = service.answer([Request(p.read_bytes(), "image/png", "image/png") for p in inputs])  # one batch
    for path, reply in zip(inputs, replies):
        assert reply.status == 200 and reply.body == (tmp_path / "out" / f"{path.stem}.png").read_bytes()
    ok("sample", "conv-vae-mnist", "-n", "4", "--seed", "9", "--each", tmp_path / "each")
    (reply,) = service.answer([Request({"task": "sample", "n": 4, "seed": 9}, "application/json")])
    sent = [base64.b64decode(image) for image in json.loads(reply.body)["images"]]
    assert sent == [(tmp_path / "each" / name).read_bytes() for name in listing(tmp_path / "each")]


def test_outputs_do_not_depend_on_the_batch_size(tmp_path):
    inputs = save(tmp_path / "in", digits(7))
    ok("reconstruct", "conv-vae-mnist", tmp_path / "in", "--out", tmp_path / "a", "--batch-size", "3")
    ok("reconstruct", "conv-vae-mnist", tmp_path / "in", "--out", tmp_path / "b", "--batch-size", "64")
    for path in inputs:
        a, b = (read_png(tmp_path / d / f"{path.stem}.png") for d in "ab")
        assert (a - b).abs().max() <= PIXEL


# --------------------------------------------------------------------------------------------
# Refusals: nothing is written


def test_a_corrupt_file_is_named_before_anything_is_written(tmp_path):
    save(tmp_path / "in", digits(3))
    broken = tmp_path / "in" / "img1.png"
    broken.write_bytes(broken.read_bytes()[:60])  # truncated mid-IDAT
    before = listing(tmp_path)
    message = fails("reconstruct", "conv-vae-mnist", tmp_path / "in", "--out", tmp_path / "out",
                    "--grid", tmp_path / "grid.png")
    assert str(broken) in message and "truncated or corrupt" in message
    assert not (tmp_path / "out").exists() and not (tmp_path / "grid.png").exists()
    message = fails("encode", "conv-vae-mnist", tmp_path / "in", "--out", tmp_path / "codes.npy")
    assert str(broken) in message and listing(tmp_path) == before


def test_a_file_that_is_not_an_image_is_named(tmp_path):
    save(tmp_path / "in", digits(2))
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    (tmp_path / "in" / "fake.png").write_text("not a png either")
    message = fails("reconstruct", "conv-vae-mnist", str(tmp_path / "in" / "*"), "--out", tmp_path / "out")
    assert str(tmp_path / "in" / "fake.png") in message and "not a PNG or JPEG image" in message
    assert not (tmp_path / "out").exists()


def test_an_undeclared_task_is_refused_with_the_models_tasks(tmp_path, models):
    save(tmp_path / "in", digits(2))
    for task in ("colorize", "denoise"):
        message = fails(task, "conv-vae-mnist", tmp_path / "in", "--out", tmp_path / "out")
        assert f"does not support task '{task}'" in message
        assert f"it supports: {', '.join(models('conv-vae-mnist').tasks)}" in message
    message = fails("sample", "denoising-ae-mnist", "--out", tmp_path / "s.png")
    assert "does not support task 'sample'" in message
    message = fails("encode", "colorization-ae-photos", tmp_path / "in", "--out", tmp_path / "c.npy")
    assert "it supports: colorize" in message
    assert listing(tmp_path) == ["img0.png", "img1.png", "in"]


def test_existing_outputs_are_kept_unless_overwrite(tmp_path, models):
    inputs = save(tmp_path / "in", digits(2))
    ok("reconstruct", "conv-vae-mnist", tmp_path / "in", "--out", tmp_path / "out")
    target = tmp_path / "out" / "img1.png"
    target.write_bytes(b"mine")
    message = fails("reconstruct", "conv-vae-mnist", tmp_path / "in", "--out", tmp_path / "out")
    assert "already exists" in message and "--overwrite" in message
    assert target.read_bytes() == b"mine"
    ok("reconstruct", "conv-vae-mnist", tmp_path / "in", "--out", tmp_path / "out", "--overwrite")
    expected = models("conv-vae-mnist").reconstruct(as_input(inputs[1])[None])[0]
    assert (read_png(target) - expected).abs().max() <= PIXEL
    (tmp_path / "codes.txt").write_text("someone's notes\n")  # the sidecar of codes.npy
    message = fails("encode", "conv-vae-mnist", tmp_path / "in", "--out", tmp_path / "codes.npy")
    assert str(tmp_path / "codes.txt") in message and "already exists" in message
    assert not (tmp_path / "codes.npy").exists() and (tmp_path / "codes.txt").read_text() == "someone's notes\n"


def test_outputs_never_replace_inputs_and_clashing_stems_are_refused(tmp_path):
    inputs = save(tmp_path / "in", digits(2))
    before = [p.read_bytes() for p in inputs]
    message = fails("reconstruct", "conv-vae-mnist", tmp_path / "in", "--out", tmp_path / "in", "--overwrite")
    assert "is one of the inputs" in message
    assert [p.read_bytes() for p in inputs] == before
    save(tmp_path / "other", digits(1), suffix=".jpg")  # other/img0.jpg -> out/img0.png, like in/img0.png
    message = fails("reconstruct", "conv-vae-mnist", tmp_path / "in", tmp_path / "other", "--out", tmp_path / "out")
    assert str(tmp_path / "in" / "img0.png") in message and str(tmp_path / "other" / "img0.jpg") in message
    assert not (tmp_path / "out").exists()


def test_a_wrong_size_is_refused_or_resized(tmp_path, models):
    inputs = save(tmp_path / "in", digits(1, size=40))
    message = fails("reconstruct", "conv-vae-mnist", inputs[0], "--out", tmp_path / "out")
    assert str(inputs[0]) in message and "40x40" in message and "28x28" in message and "--resize" in message
    assert not (tmp_path / "out").exists()
    ok("reconstruct", "conv-vae-mnist", inputs[0], "--out", tmp_path / "out", "--resize")
    resized = Image.open(inputs[0]).resize((28, 28), Image.Resampling.LANCZOS)  # square: crop is a no-op
    x = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255)[None, None]
    expected = models("conv-vae-mnist").reconstruct(x)[0]
    assert (read_png(tmp_path / "out" / "img0.png") - expected).abs().max() <= PIXEL


# --------------------------------------------------------------------------------------------
# encode


@pytest.mark.parametrize("suffix", [".npy", ".json", ".csv"])
def test_encode_formats_round_trip(tmp_path, models, suffix):
    inputs = save(tmp_path / "in", digits(4)) + save(tmp_path / "in2", digits(1, seed=5), prefix="z")
    out = tmp_path / f"codes{suffix}"
    result = ok("encode", "dense-vae-mnist-2d", tmp_path / "in2", tmp_path / "in", "--out", out, "--json")
    model = models("dense-vae-mnist-2d")
    order = [inputs[4], *inputs[:4]]  # in the order of IN..., each folder sorted
    expected = model.encode(torch.stack([as_input(p) for p in order])).detach().numpy()
    assert expected.shape == (5, 2)
    if suffix == ".npy":
        codes = np.load(out)
        files = (tmp_path / "codes.txt").read_text().splitlines()
    elif suffix == ".json":
        body = json.loads(out.read_text())
        assert body["model"] == "dense-vae-mnist-2d" and body["task"] == "encode" and body["columns"] == ["z0", "z1"]
        codes, files = np.asarray(body["values"], dtype=np.float32), body["files"]
    else:
        rows = list(csv.reader(io.StringIO(out.read_text())))
        assert rows[0] == ["file", "z0", "z1"]
        codes = np.asarray([[float(v) for v in row[1:]] for row in rows[1:]], dtype=np.float32)
        files = [row[0] for row in rows[1:]]
    assert codes.dtype == np.float32 and np.array_equal(codes, expected)
    assert files == [str(p) for p in order]
    summary = json.loads(result.stdout)
    assert summary["shape"] == [5, 2] and summary["out"] == str(out) and summary["format"] == suffix[1:]


def test_an_image_to_scalar_task_is_one_small_command(tmp_path, models):
    """The pattern the module documents for further tasks: a scalar per image, written like encode's codes."""
    import click

    from zoo.cli.local import image_inputs, model_options, run_table_task, table_output

    @click.command()
    @image_inputs
    @table_output("scores.csv")
    @model_options
    def score(**options):
        run_table_task("anomaly-score", **options)

    inputs = save(tmp_path / "in", digits(3, seed=6))
    result = CliRunner().invoke(score, ["conv-vae-mnist", str(tmp_path / "in"), "--out", str(tmp_path / "s.npy")])
    assert result.exit_code == 0, result.output
    expected = models("conv-vae-mnist").anomaly_score(torch.stack([as_input(p) for p in inputs])).detach().numpy()
    assert np.array_equal(np.load(tmp_path / "s.npy"), expected) and expected.shape == (3,)
    result = CliRunner().invoke(score, ["colorization-ae-photos", str(tmp_path / "in"),
                                        "--out", str(tmp_path / "c.csv")])
    assert result.exit_code != 0 and "it supports: colorize" in str(result.exception)  # `zoo` prints it as an error


def test_encode_refuses_an_unknown_format(tmp_path):
    save(tmp_path / "in", digits(1))
    message = fails("encode", "dense-vae-mnist-2d", tmp_path / "in", "--out", tmp_path / "codes.pkl")
    assert "codes.pkl" in message and ".npy" in message
    assert not (tmp_path / "codes.pkl").exists()


# --------------------------------------------------------------------------------------------
# interpolate, manifold, sample


def test_interpolation_ends_are_the_reconstructions_from_the_codes(tmp_path, models):
    a, b = save(tmp_path / "in", digits(2, seed=7))
    result = ok("interpolate", "conv-vae-mnist", a, b, "--steps", "3", "--out", tmp_path / "strip.png",
                "--scale", "1", "--json")
    model = models("conv-vae-mnist")
    z = model.encode(torch.stack([as_input(a), as_input(b)]))
    strip = np.asarray(Image.open(tmp_path / "strip.png").convert("L"), dtype=np.float32) / 255
    assert strip.shape == (2 + 30, 2 + 5 * 30)
    cells = [torch.from_numpy(grid_cell(strip, 0, i, 28, 28).copy()) for i in range(5)]
    for cell, code in [(cells[0], z[0]), (cells[2], (z[0] + z[1]) / 2), (cells[4], z[1])]:
        assert (cell - model.decode(code[None])[0, 0]).abs().max() <= PIXEL
    summary = json.loads(result.stdout)
    assert summary["shape"] == [5, 1, 28, 28] and summary["t"] == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_interpolate_needs_encode_and_decode(tmp_path):
    model = zoo.create("colorization-ae", image_size=8, channels=[4])
    model.save_pretrained(tmp_path / "colorizer")
    a, b = save(tmp_path / "in", digits(2, size=8))
    message = fails("interpolate", tmp_path / "colorizer", a, b, "--out", tmp_path / "strip.png")
    assert "does not support task 'encode'" in message and "it supports: colorize" in message
    assert not (tmp_path / "strip.png").exists()


def test_manifold_decodes_the_prior_quantile_grid(tmp_path, models):
    ok("manifold", "dense-vae-mnist-2d", "--side", "3", "--scale", "1", "--out", tmp_path / "m.png")
    model = models("dense-vae-mnist-2d")
    expected = model.decode(manifold_codes(3))
    grid = np.asarray(Image.open(tmp_path / "m.png").convert("L"), dtype=np.float32) / 255
    assert grid.shape == (2 + 3 * 30, 2 + 3 * 30)
    for i in range(9):
        cell = torch.from_numpy(grid_cell(grid, i // 3, i % 3, 28, 28).copy())
        assert (cell - expected[i, 0]).abs().max() <= PIXEL
    codes = manifold_codes(3)  # z0 rises to the right, z1 falls downwards, over the N(0, 1) quantiles 0.03..0.97
    assert codes[0, 0] < codes[2, 0] and codes[0, 1] > codes[6, 1]
    assert torch.allclose(codes[0], torch.tensor([-1.8808, 1.8808]), atol=1e-4)


def test_manifold_needs_a_two_dimensional_latent(tmp_path):
    message = fails("manifold", "conv-vae-mnist", "--out", tmp_path / "m.png")
    assert "2-D latent space" in message and "latent_dim 32" in message
    zoo.create("dense-vae", image_size=8, hidden=[16], latent_dim=3).save_pretrained(tmp_path / "tiny")
    message = fails("manifold", tmp_path / "tiny", "--out", tmp_path / "m.png")
    assert "latent_dim 3" in message
    message = fails("manifold", "colorization-ae-photos", "--out", tmp_path / "m.png")
    assert "does not support task 'decode'" in message
    assert not (tmp_path / "m.png").exists()


def test_sample_with_a_seed_is_reproducible(tmp_path, models):
    ok("sample", "conv-vae-mnist", "-n", "6", "--seed", "3", "--out", tmp_path / "a.png", "--each", tmp_path / "a")
    ok("sample", "conv-vae-mnist", "-n", "6", "--seed", "3", "--out", tmp_path / "b.png", "--each", tmp_path / "b")
    ok("sample", "conv-vae-mnist", "-n", "6", "--seed", "4", "--out", tmp_path / "c.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "c.png").read_bytes()
    names = [f"sample-{i:04d}.png" for i in range(6)]
    assert listing(tmp_path / "a") == names
    model = models("conv-vae-mnist")
    expected = model.sample(6, generator=torch.Generator().manual_seed(3))  # what `zoo predict` gets for seed 3
    for i, name in enumerate(names):
        assert (read_png(tmp_path / "a" / name) - expected[i]).abs().max() <= PIXEL
    grid = np.asarray(Image.open(tmp_path / "a.png"))
    assert grid.shape[:2] == ((2 + 2 * 30) * 3, (2 + 3 * 30) * 3)  # ceil(sqrt(6)) = 3 per row, scaled 3x


def test_sample_without_a_seed_reports_the_one_it_drew(tmp_path):
    first = json.loads(ok("sample", "conv-vae-mnist", "-n", "2", "--each", tmp_path / "a", "--json").stdout)
    again = ok("sample", "conv-vae-mnist", "-n", "2", "--seed", first["seed"], "--each", tmp_path / "b")
    assert str(first["seed"]) in again.stdout
    assert first["shape"] == [2, 1, 28, 28]
    for name in listing(tmp_path / "a"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_sample_needs_somewhere_to_write_and_a_png_grid(tmp_path):
    assert "--out grid.png and/or --each DIR" in fails("sample", "conv-vae-mnist", "-n", "2")
    assert "ending in .png" in fails("sample", "conv-vae-mnist", "--out", tmp_path / "grid.jpg")
    assert listing(tmp_path) == []


# --------------------------------------------------------------------------------------------
# Helpers


def test_folders_and_globs_expand_sorted_and_once(tmp_path):
    save(tmp_path / "d", digits(3))
    save(tmp_path / "d" / "sub", digits(1), prefix="deep", suffix=".jpg")
    (tmp_path / "d" / "readme.txt").write_text("x")
    found = expand_inputs([str(tmp_path / "d"), str(tmp_path / "d" / "img*.png")])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == \
        ["d/img0.png", "d/img1.png", "d/img2.png", "d/sub/deep0.jpg"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageInputError, match="folder holds no"):
        expand_inputs([str(tmp_path / "empty")])
    with pytest.raises(ImageInputError, match="no such file"):
        expand_inputs([str(tmp_path / "nothing*.png")])


def test_reading_converts_channels_and_applies_exif_orientation(tmp_path):
    rgb = photos(1)[0]
    Image.fromarray(rgb).save(tmp_path / "c.png")
    grey = read_input_image(tmp_path / "c.png", (1, 32, 32))
    assert grey.dtype == torch.uint8 and np.array_equal(grey[0].numpy(), np.asarray(Image.fromarray(rgb).convert("L")))
    assert np.array_equal(read_input_image(tmp_path / "c.png", (3, 32, 32)).permute(1, 2, 0).numpy(), rgb)
    tall = np.zeros((28, 20), np.uint8)
    tall[:, :5] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise: 20 wide, 28 tall on disk -> 28x20 shown
    Image.fromarray(tall).save(tmp_path / "r.jpg", exif=exif, quality=100)
    shown = read_input_image(tmp_path / "r.jpg", (1, 20, 28))
    assert shown.shape == (1, 20, 28) and shown[0, :5].float().mean() > 200  # the bright stripe is now on top
    with pytest.raises(ImageInputError, match=r"image is 28x20 pixels but the model takes 20x28 images"):
        read_input_image(tmp_path / "r.jpg", (1, 28, 20))


def test_an_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    target = tmp_path / "out.png"

    def half_then_interrupt(self, data):
        with open(self, "wb") as f:
            f.write(data[: len(data) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(type(target), "write_bytes", half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_bytes(target, b"x" * 100)
    assert os.listdir(tmp_path) == []


def test_progress_bar_only_for_long_inputs_on_a_terminal():
    class Stream:
        def __init__(self, tty):
            self.tty = tty

        def isatty(self):
            return self.tty

    assert progress_wanted(PROGRESS_MIN, True, Stream(True))
    assert not progress_wanted(PROGRESS_MIN - 1, True, Stream(True))
    assert not progress_wanted(1000, True, Stream(False))
    assert not progress_wanted(1000, False, Stream(True))  # --no-progress


def test_the_commands_are_listed_and_documented():
    result = ok("--help")
    for command in ("sample", "reconstruct", "denoise", "colorize", "encode", "interpolate", "manifold"):
        assert command in result.output
        assert "--device" in ok(command, "--help").output
    assert "--resize" in ok("reconstruct", "--help").output
