"""`zoo export --format onnx`: one ONNX graph per declared task, checked against PyTorch on real test images."""

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

import zoo
import zoo.data
import zoo.plugins
from tests.serving_fixtures import with_example_plugin
from zoo.cli.app import main
from zoo.components.color import rgb_to_gray
from zoo.errors import UnknownNameError, ZooError
from zoo.export import MANIFEST_NAME, ExportError, MissingExtraError, export_onnx
from zoo.export.graphs import TaskModule, graph_spec
from zoo.export.verify import max_abs_diff, session
from zoo.plugins import get_host
from zoo.tasks import TASKS

N_IMAGES = 64
#: |ORT - torch| <= TOLERANCE + RELATIVE * max|torch|. The relative part matters only for large outputs:
#: a VAE's anomaly score is a float32 decoder's logits summed over 784 pixels (~100-300 nats), and PyTorch
#: alone gives scores 1.4e-4 apart for the same image at batch 1 and batch 64 on this CPU (different GEMM
#: kernels), while ONNX Runtime's agree exactly; 1e-6 of the score bounds that float32 noise.
TOLERANCE = 1e-4
RELATIVE = 1e-6


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``exported(name)``: the folder of the pretrained model's export, made once per module."""
    folders: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in folders:
            folders[name] = export_onnx(name, tmp_path_factory.mktemp(name)).parent
        return folders[name]

    return get


def real_images(model, dataset: str) -> torch.Tensor:
    """The first 64 test images of ``dataset`` as the model's input: greyscale copies for a 1-channel colour model."""
    images = zoo.data.load(dataset, "test").images[:N_IMAGES].float() / 255
    return images if images.shape[1:] == model.input_shape else rgb_to_gray(images)


def graph_inputs(model, task: str, images: torch.Tensor) -> torch.Tensor:
    """What the task's graph takes: the images, their encodings, or N(0, I) draws for a count task."""
    kind = TASKS[task].input
    if kind == "image":
        return images
    if kind == "latent":
        return model.encode(images)
    return torch.randn(len(images), model.latent_dim, generator=torch.Generator().manual_seed(0))


def parity(folder: Path, model, images: torch.Tensor) -> dict[str, tuple[float, float, float]]:
    """Per graph: max |ORT - torch| (each image at batch 1, all 64 at once) and the tolerance for it."""
    import onnxruntime

    figures = {}
    for entry in json.loads((folder / MANIFEST_NAME).read_text())["graphs"]:
        module = TaskModule(model, graph_spec(model, entry["task"]).method)
        sess = session(folder / entry["file"], onnxruntime)
        x = graph_inputs(model, entry["task"], images)
        single = max(max_abs_diff(sess, module, x[i : i + 1]) for i in range(len(x)))
        with torch.no_grad():
            scale = float(module(x).abs().max())
        figures[entry["task"]] = (single, max_abs_diff(sess, module, x), TOLERANCE + RELATIVE * scale)
    return figures


def assert_parity(name: str, figures: dict[str, tuple[float, float, float]]) -> None:
    for task, (single, batch, tolerance) in figures.items():
        print(f"parity {name} {task}: batch 1 max abs {single:.3g}, batch {N_IMAGES} max abs {batch:.3g} "
              f"(tolerance {tolerance:.3g})")
    assert all(max(single, batch) <= tolerance for single, batch, tolerance in figures.values()), figures


@pytest.mark.parametrize("name", zoo.list_models())
def test_every_graph_matches_torch_on_real_test_images(name, exported):
    dataset = get_host().registry.models[name].metadata["dataset"]  # what the card's eval.json evaluated on
    model = zoo.load(name)
    folder = exported(name)
    figures = parity(folder, model, real_images(model, dataset))
    left_out = {entry["task"]: entry["reason"] for entry in json.loads((folder / MANIFEST_NAME).read_text())["left_out"]}
    assert sorted([*figures, *left_out]) == sorted(model.tasks)
    # Only a prior other than N(0, I) keeps a task out: a mixture or VampPrior model samples from its own
    # prior, so a graph fed standard normal draws would sample the wrong images.
    other_prior = getattr(model, "prior_moments", lambda: None)() is not None
    assert list(left_out) == (["sample"] if other_prior else [])
    assert all("not decode z ~ N(0, I)" in reason for reason in left_out.values())
    assert not any((folder / f"{task}.onnx").exists() for task in left_out)
    assert_parity(name, figures)


@pytest.mark.parametrize("name", ["conv-vae-mnist", "colorization-ae-photos"])
def test_manifest_describes_every_graph(name, exported):
    folder = exported(name)
    record = json.loads((folder / MANIFEST_NAME).read_text())
    entry = get_host().registry.models[name]
    model = zoo.load(name)
    assert (record["model"], record["architecture"]) == (name, entry.architecture)
    assert record["weights_sha256"] == entry.sha256
    assert record["zoo_version"] == zoo.__version__
    assert [g["task"] for g in record["graphs"]] == list(model.tasks)
    for graph in record["graphs"]:
        proto = onnx.load(str(folder / graph["file"]))
        onnx.checker.check_model(proto, full_check=True)
        assert record["opset"] == next(o.version for o in proto.opset_import if o.domain == "")
        assert [p["name"] for p in graph["inputs"]] == [v.name for v in proto.graph.input]
        assert [p["name"] for p in graph["outputs"]] == [v.name for v in proto.graph.output] == [graph["task"]]
        for port in (*graph["inputs"], *graph["outputs"]):
            assert port["shape"][0] == "N" and port["dtype"] == "float32"
        kinds = (TASKS[graph["task"]].input, TASKS[graph["task"]].output)
        (inp,), (out,) = graph["inputs"], graph["outputs"]
        assert inp["shape"][1:] == (list(model.input_shape) if kinds[0] == "image" else [model.latent_dim])
        assert inp["range"] == ([0.0, 1.0] if kinds[0] == "image" else None)
        assert out["range"] == ([0.0, 1.0] if kinds[1] == "image" else None)
        if kinds[1] == "scalar":
            assert out["shape"] == ["N"]
        if kinds[0] == "count":
            assert inp["name"] == "latent" and "N(0, I)" in inp["meaning"] and "N(0, I)" in graph["computes"]


def test_colorizer_graph_holds_the_lab_conversion(exported):
    """The colorizer's graph takes the grey image itself and returns RGB: no Lab work is left to a server."""
    (graph,) = json.loads((exported("colorization-ae-photos") / MANIFEST_NAME).read_text())["graphs"]
    assert graph["inputs"][0]["shape"] == ["N", 1, 32, 32] and graph["outputs"][0]["shape"] == ["N", 3, 32, 32]
    assert "luma" in graph["inputs"][0]["meaning"] and "RGB" in graph["outputs"][0]["meaning"]


@pytest.fixture
def example_plugin(tmp_path):
    """The example third-party plugin, discoverable through a real entry point for this test."""
    undo = with_example_plugin(tmp_path)
    yield
    undo()


def test_third_party_plugin_exports_through_the_cli(example_plugin, tmp_path):
    torch.manual_seed(0)
    folder = zoo.create("beta-vae", hidden=[64], latent_dim=8).eval().save_pretrained(tmp_path / "beta")
    out = tmp_path / "onnx"
    result = CliRunner().invoke(main, ["export", str(folder), "--format", "onnx", "--out", str(out), "--opset", "18"])
    assert result.exit_code == 0, result.output
    model = zoo.load(folder)
    for task in model.tasks:
        assert f"{task}: wrote {out / f'{task}.onnx'}" in result.output
    assert f"wrote {out / MANIFEST_NAME}" in result.output
    record = json.loads((out / MANIFEST_NAME).read_text())
    assert (record["model"], record["architecture"], record["opset"]) == ("beta", "beta-vae", 18)
    assert_parity("beta-vae (fresh)", parity(out, model, real_images(model, "mnist")))


UNTRACEABLE = """
import numpy as np
import torch
import zoo
from zoo.components import MLP
from zoo.vae import VAEConfig, VariationalAutoencoder

class TinyVAE(VariationalAutoencoder):
    config_class = VAEConfig

    def __init__(self, config):
        super().__init__(config)
        self.encoder = MLP(784, [8], 2 * config.latent_dim)
        self.decoder = MLP(config.latent_dim, [8], 784)

    def posterior(self, x):
        return self.encoder(x.flatten(1)).chunk(2, dim=-1)

    def decoder_logits(self, z):
        return self.decoder(z).view(-1, *self.input_shape)

class NumpyVAE(TinyVAE):
    architecture = "numpy-vae"
    tasks = ("encode", "anomaly-score")

    def anomaly_score(self, x):
        return torch.from_numpy(np.square(x.numpy()).sum(axis=(1, 2, 3)))

class BranchyVAE(TinyVAE):
    architecture = "branchy-vae"
    tasks = ("encode", "reconstruct")

    def reconstruct(self, x):
        if x.mean().item() > 0.5:
            return x
        return self.decode(self.encode(x))

@zoo.hookimpl
def register_architectures(register):
    register(NumpyVAE)
    register(BranchyVAE)
"""


@pytest.mark.parametrize(("architecture", "task", "cause"), [
    ("numpy-vae", "anomaly-score", ".numpy() is not supported"),
    ("branchy-vae", "reconstruct", "data-dependent expression"),
])
def test_a_task_that_does_not_trace_is_named(plugin_distribution, tmp_path, architecture, task, cause):
    plugin_distribution("untraceable-vaes", UNTRACEABLE)
    folder = zoo.create(architecture).save_pretrained(tmp_path / architecture)
    out = tmp_path / "out"
    with pytest.raises(ExportError) as raised:
        export_onnx(folder, out)
    message = str(raised.value)
    assert isinstance(raised.value, ZooError)
    assert f"task {task!r}" in message and cause in message, message
    assert list(out.iterdir()) == []  # encode did export; its graph is removed with the failed run


def test_without_the_onnx_extra_the_error_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` raise ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'ae-zoo\[onnx\]'"):
        export_onnx("conv-vae-mnist", tmp_path)
    result = CliRunner().invoke(main, ["export", "conv-vae-mnist", "--format", "onnx", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "pip install 'ae-zoo[onnx]'" in result.output
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_name_is_the_usual_error(tmp_path):
    with pytest.raises(UnknownNameError, match="conv-vae-mnist"):
        export_onnx("conv-vae-mnsit", tmp_path)
    result = CliRunner().invoke(main, ["export", "conv-vae-mnsit", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "unknown model 'conv-vae-mnsit'" in result.output


def test_graphs_come_from_declared_task_kinds_only(exported):
    """A count task's graph is the decode of client-drawn latents; no graph takes a count."""
    model = zoo.load("conv-vae-mnist")
    spec = graph_spec(model, "sample")
    assert (spec.method, spec.input_name, spec.input_kind, spec.file) == ("decode", "latent", "latent", "sample.onnx")
    import onnxruntime

    folder = exported("conv-vae-mnist")
    z = np.random.default_rng(0).standard_normal((4, model.latent_dim), dtype=np.float32)
    sample = session(folder / "sample.onnx", onnxruntime).run(None, {"latent": z})[0]
    decode = session(folder / "decode.onnx", onnxruntime).run(None, {"latent": z})[0]
    assert np.array_equal(sample, decode)
