"""zoo decode and zoo cluster: the decode and cluster tasks run in-process, and every declared task has a command.

Outputs are compared with what the model computes on the same inputs here: images within
1/255 (8-bit PNGs), cluster indices exactly.
"""

import csv
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from tests.conftest import ok
from tests.test_local_cli import PIXEL, as_input, digits, fails, listing, save
from zoo.cli.cluster import EMPTY_CELL
from zoo.images import grid_cell
from zoo.tasks import TASKS

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def conv_vae():
    return zoo.load("conv-vae-mnist", device="cpu")


@pytest.fixture(scope="module")
def mixture_vae():
    return zoo.load("mixture-vae-mnist", device="cpu")


def png(path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path), dtype=np.float32) / 255)


# --------------------------------------------------------------------------------------------
# decode


@pytest.mark.parametrize("suffix", [".npy", ".json", ".csv"])
def test_encode_then_decode_gives_the_reconstructions_in_every_format(tmp_path, conv_vae, suffix):
    inputs = save(tmp_path / "in", digits(5, seed=3))
    codes = tmp_path / f"codes{suffix}"
    ok("encode", "conv-vae-mnist", tmp_path / "in", "--out", codes)
    result = ok("decode", "conv-vae-mnist", codes, "--out", tmp_path / "out", "--grid", tmp_path / "grid.png",
                "--scale", "1", "--json")

    with torch.no_grad():
        expected = conv_vae.decode(conv_vae.encode(torch.stack([as_input(p) for p in inputs])))
    assert listing(tmp_path / "out") == [p.with_suffix(".png").name for p in inputs]  # named after the inputs
    grid = np.asarray(Image.open(tmp_path / "grid.png").convert("L"), dtype=np.float32) / 255
    for i, path in enumerate(inputs):
        written = png(tmp_path / "out" / path.with_suffix(".png").name)
        assert torch.allclose(written, expected[i, 0], atol=PIXEL)
        assert np.allclose(grid_cell(grid, 0, i, 28, 28), written.numpy(), atol=1e-6)
    summary = json.loads(result.stdout)
    assert summary["count"] == 5 and summary["latent_dim"] == 32 and summary["output_shape"] == [1, 28, 28]


def test_codes_without_names_are_decoded_in_row_order(tmp_path, conv_vae):
    codes = torch.randn(3, 32, generator=torch.Generator().manual_seed(1))
    np.save(tmp_path / "z.npy", codes.numpy().astype(np.float64))  # float64, no list of inputs beside it
    (tmp_path / "z.csv").write_text("\n".join(",".join(repr(float(v)) for v in row) for row in codes.tolist()))
    ok("decode", "conv-vae-mnist", tmp_path / "z.npy", "--out", tmp_path / "a")
    ok("decode", "conv-vae-mnist", tmp_path / "z.csv", "--out", tmp_path / "b")

    with torch.no_grad():
        expected = conv_vae.decode(codes)
    names = ["code-0000.png", "code-0001.png", "code-0002.png"]
    assert listing(tmp_path / "a") == names and listing(tmp_path / "b") == names
    for i, name in enumerate(names):
        assert torch.allclose(png(tmp_path / "a" / name), expected[i, 0], atol=PIXEL)
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_the_same_codes_decode_the_same_at_any_batch_size(tmp_path):
    np.save(tmp_path / "z.npy", np.random.default_rng(0).normal(size=(7, 2)).astype(np.float32))
    ok("decode", "dense-vae-mnist-2d", tmp_path / "z.npy", "--out", tmp_path / "one", "--batch-size", "1")
    ok("decode", "dense-vae-mnist-2d", tmp_path / "z.npy", "--out", tmp_path / "all", "--batch-size", "64")
    for name in listing(tmp_path / "all"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "all" / name).read_bytes()


@pytest.mark.parametrize("name, body, expected", [
    ("wide.csv", "file,z0,z1,z2\na.png,1,2,3\n", "each row has 3 number(s), but dense-vae-mnist-2d takes 2"),
    ("nan.json", json.dumps({"values": [[0.0, 1.0], [0.5, None]], "files": ["a", "b"]}), "null is not a number"),
    ("inf.csv", "file,z0,z1\na.png,0,1\nb.png,inf,0\n", "b.png, column 0 is inf; every value must be finite"),
    ("ragged.csv", "0,1\n2\n", "not a table of numbers"),
    ("words.csv", "file,z0,z1\na.png,zero,one\n", "not a table of numbers"),
    ("broken.json", '{"values": [[0, 1]', "not a table of numbers"),
    ("object.json", '[[0, 1]]', 'expected an object with "values"'),
    ("count.json", json.dumps({"values": [[0, 1]], "files": ["a", "b"]}), "1 rows but 2 file names"),
    ("empty.csv", "", "the file is empty"),
    ("codes.pkl", "", "a table is a .npy, .json, .csv file"),
])
def test_a_bad_table_is_named_and_nothing_is_written(tmp_path, name, body, expected):
    (tmp_path / name).write_text(body)
    message = fails("decode", "dense-vae-mnist-2d", tmp_path / name, "--out", tmp_path / "out")
    assert expected in message and name in message
    assert not (tmp_path / "out").exists()


def test_a_pickled_npy_is_refused_without_unpickling_it(tmp_path):
    class Trap:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    np.save(tmp_path / "trap.npy", np.array([Trap()], dtype=object), allow_pickle=True)
    message = fails("decode", "dense-vae-mnist-2d", tmp_path / "trap.npy", "--out", tmp_path / "out")
    assert "trap.npy: not a table of numbers" in message and "unpickled" not in message
    np.save(tmp_path / "text.npy", np.array([["a", "b"]]))
    assert "holds <U1 values, not numbers" in fails("decode", "dense-vae-mnist-2d", tmp_path / "text.npy",
                                                    "--out", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_decode_needs_the_task_and_keeps_existing_files(tmp_path):
    np.save(tmp_path / "z.npy", np.zeros((1, 2), dtype=np.float32))
    assert "it supports: colorize" in fails("decode", "colorization-ae-photos", tmp_path / "z.npy",
                                            "--out", tmp_path / "out")
    ok("decode", "dense-vae-mnist-2d", tmp_path / "z.npy", "--out", tmp_path / "out")
    before = (tmp_path / "out" / "code-0000.png").read_bytes()
    np.save(tmp_path / "z.npy", np.ones((1, 2), dtype=np.float32))
    assert "already exists" in fails("decode", "dense-vae-mnist-2d", tmp_path / "z.npy", "--out", tmp_path / "out")
    assert (tmp_path / "out" / "code-0000.png").read_bytes() == before
    ok("decode", "dense-vae-mnist-2d", tmp_path / "z.npy", "--out", tmp_path / "out", "--overwrite")
    assert (tmp_path / "out" / "code-0000.png").read_bytes() != before


# --------------------------------------------------------------------------------------------
# cluster


@pytest.fixture(scope="module")
def drawn_digits(tmp_path_factory, mixture_vae):
    """24 PNGs drawn from the mixture VAE's prior: digits of several kinds, so of several clusters."""
    folder = tmp_path_factory.mktemp("drawn")
    with torch.no_grad():
        images = mixture_vae.sample(24, generator=torch.Generator().manual_seed(0))
    return save(folder, (images[:, 0] * 255).round().to(torch.uint8).numpy(), prefix="d")


@pytest.mark.parametrize("suffix", [".csv", ".json", ".npy"])
def test_cluster_writes_the_models_assignment_as_whole_numbers(tmp_path, mixture_vae, drawn_digits, suffix):
    out = tmp_path / f"clusters{suffix}"
    result = ok("cluster", "mixture-vae-mnist", *drawn_digits, "--out", out, "--json")

    with torch.no_grad():
        expected = mixture_vae.cluster(torch.stack([as_input(p) for p in drawn_digits])).long().tolist()
    assert len(set(expected)) >= 3
    if suffix == ".csv":
        rows = list(csv.reader(io.StringIO(out.read_text())))
        assert rows[0] == ["file", "cluster"]
        assert rows[1:] == [[str(p), str(k)] for p, k in zip(drawn_digits, expected)]  # "3", not "3.0"
    elif suffix == ".json":
        body = json.loads(out.read_text())
        assert body["task"] == "cluster" and body["columns"] == ["cluster"]
        assert body["values"] == expected and all(type(k) is int for k in body["values"])
        assert body["files"] == [str(p) for p in drawn_digits]
    else:
        values = np.load(out)
        assert values.dtype == np.int64 and values.tolist() == expected
        assert (tmp_path / "clusters.txt").read_text().splitlines() == [str(p) for p in drawn_digits]
    sizes = json.loads(result.stdout)["sizes"]
    assert sizes == {str(k): expected.count(k) for k in sorted(set(expected))}


def test_the_cluster_grid_shows_each_clusters_members_in_its_row(tmp_path, mixture_vae, drawn_digits):
    ok("cluster", "mixture-vae-mnist", *drawn_digits, "--out", tmp_path / "c.csv", "--grid", tmp_path / "c.png",
       "--scale", "1")
    rows = list(csv.reader(io.StringIO((tmp_path / "c.csv").read_text())))[1:]
    members: dict[int, list[str]] = {}
    for path, k in rows:
        members.setdefault(int(k), []).append(path)
    grid = np.asarray(Image.open(tmp_path / "c.png").convert("L"), dtype=np.float32) / 255
    for k in range(max(members) + 1):
        shown = members.get(k, [])[:8]
        for col in range(8):
            cell = grid_cell(grid, k, col, 28, 28)
            if col < len(shown):
                assert np.allclose(cell, png(shown[col]).numpy(), atol=1e-6)
            else:
                assert np.allclose(cell, round(EMPTY_CELL * 255) / 255)


def test_cluster_refuses_a_model_without_the_task_and_a_non_png_grid(tmp_path, drawn_digits):
    message = fails("cluster", "conv-vae-mnist", drawn_digits[0], "--out", tmp_path / "c.csv")
    assert "conv-vae-mnist" in message and "cluster" in message and "it supports:" in message
    message = fails("cluster", "mixture-vae-mnist", drawn_digits[0], "--out", tmp_path / "c.csv",
                    "--grid", tmp_path / "c.jpg")
    assert "--grid" in message and ".png" in message
    assert "c.txt" not in listing(tmp_path) and "c.csv" not in listing(tmp_path)


# --------------------------------------------------------------------------------------------
# every declared task runs locally

#: The local command that runs each task.
COMMAND_OF_TASK = {"reconstruct": "reconstruct", "encode": "encode", "decode": "decode", "sample": "sample",
                   "denoise": "denoise", "colorize": "colorize", "anomaly-score": "anomaly", "cluster": "cluster"}


def test_every_declared_task_has_a_local_command():
    assert set(TASKS) == set(COMMAND_OF_TASK), "a task was added or removed: give it a local command"
    listed = ok("--help").output
    for task, command in COMMAND_OF_TASK.items():
        assert f"  {command} " in listed, command
        assert "--device" in ok(*command.split(), *(["score"] if command == "anomaly" else []), "--help").output
