"""The conformance kit (zoo.testing): built-ins, both example plugins and a scaffolded plugin pass it; a broken
architecture gets every violation listed at once, in Python and through the pytest fixture."""

import dataclasses
import json
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import zoo
from tests.conftest import EXAMPLES, pip_install, pip_uninstall
from zoo.testing import CHECKS, ConformanceError, check_architecture


@pytest.mark.parametrize("architecture", ["dense-vae", "conv-vae", "denoising-ae", "colorization-ae"])
def test_built_in_architectures_pass(zoo_conformance, architecture):
    report = zoo_conformance(architecture)
    assert report.passed == [c for c in CHECKS if c != "package"] and not report.skipped


@pytest.mark.parametrize("architecture, config", [("conv-vae", {"iwae_samples": 3}),
                                                  ("dense-vae", {"prior": "vamp", "pseudo_inputs": 7}),
                                                  ("conv-vae", {"prior": "vamp", "pseudo_inputs": 5, "iwae_samples": 2})])
def test_vaes_with_the_iwae_objective_or_the_vamp_prior_pass(zoo_conformance, architecture, config):
    """The shared objective and prior go through the same contract: loss terms, trainer steps, save/load, eval."""
    report = zoo_conformance(architecture, config=config)
    assert report.passed == [c for c in CHECKS if c != "package"] and not report.skipped


@pytest.mark.parametrize("architecture", ["beta-vae", "vq-ae"])
def test_example_plugins_pass_including_a_packaged_mar(installed_examples, zoo_conformance, architecture):
    report = zoo_conformance(architecture, package=True)
    assert report.passed == list(CHECKS)


def test_example_plugin_suite_runs_the_kit_through_the_pytest_fixture(installed_examples):
    """What an author runs: the example's own tests, through the pytest11 entry point ae-zoo installs."""
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                            cwd=EXAMPLES["zoo-vq-ae"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


# A broken architecture ---------------------------------------------------------------------------------------

@dataclasses.dataclass
class BrokenConfig(zoo.ModelConfig):
    image_channels: int = 1
    image_size: int = 28
    latent_dim: int = 4


class Broken(zoo.Autoencoder):
    """Four contract violations: pixels outside [0, 1], codes of the wrong length, a per-image loss term and
    a save that writes the time into the weights file."""

    architecture = "broken-ae"
    config_class = BrokenConfig
    tasks = ("reconstruct", "encode", "decode")

    def __init__(self, config):
        super().__init__(config)
        self.encoder = torch.nn.Linear(784, 5)
        self.decoder = torch.nn.Linear(4, 784)

    def encode(self, x):
        return self.encoder(x.flatten(1))  # 5 values, but latent_dim is 4

    def decode(self, z):
        return self.decoder(z).view(-1, 1, 28, 28)  # no sigmoid: outside [0, 1]

    def reconstruct(self, x):
        return 2 * x

    def loss(self, batch, step=None):
        per_image = (self.decoder(self.encoder(batch.flatten(1))[:, :4]) - batch.flatten(1)).pow(2).mean(1)
        return {"loss": per_image.mean(), "per_image": per_image}

    def save_pretrained(self, directory, metadata=None):
        return super().save_pretrained(directory, metadata={"saved_at": str(time.perf_counter_ns())})


def test_broken_architecture_gets_every_violation_at_once(tmp_path):
    with pytest.raises(ConformanceError) as caught:
        check_architecture(Broken, workdir=tmp_path)
    report = caught.value.report
    text = "\n".join(report.violations)
    assert "reconstruct: returned pixel values in [0, 2]; images must be in [0, 1]" in text
    assert "encode: returned vectors of length 5, but latent_dim is 4" in text
    assert "loss: broken-ae.loss() returned term 'per_image' with shape (4,)" in text
    assert "checkpoint: model.safetensors is not byte-identical across saves" in text
    assert report.passed == ["registration", "config", "build"]
    assert str(caught.value).startswith("broken-ae: ") and isinstance(caught.value, AssertionError)


def test_an_invalid_config_stops_before_building_and_says_what_was_not_run(tmp_path):
    with pytest.raises(ConformanceError) as caught:
        check_architecture("conv-vae", config={"image_size": 30}, workdir=tmp_path)
    report = caught.value.report
    assert report.violations == ["config: the config to check is invalid: config field 'image_size': must be "
                                 "divisible by 2**2 (one halving per entry of channels), got 30"]
    assert report.skipped[0] == "build: needs config" and len(report.skipped) == 7


def test_a_config_without_image_fields_is_told_what_input_shape_needs(tmp_path):
    @dataclasses.dataclass
    class Bare(zoo.ModelConfig):
        width: int = 3

    class NoShape(Broken):
        architecture = "no-shape-ae"
        config_class = Bare

    with pytest.raises(ConformanceError, match="build: input_shape failed .*add those fields to the config or "
                                               "override the property"):
        check_architecture(NoShape, workdir=tmp_path)


def test_a_failing_kit_in_pytest_lists_the_violations(tmp_path):
    (tmp_path / "broken_plugin.py").write_text(textwrap.dedent("""
        import dataclasses, torch, zoo

        @dataclasses.dataclass
        class Config(zoo.ModelConfig):
            image_channels: int = 1
            image_size: int = 8

        class Grey(zoo.Autoencoder):
            architecture = "grey-ae"
            config_class = Config
            tasks = ("reconstruct",)

            def __init__(self, config):
                super().__init__(config)
                self.scale = torch.nn.Parameter(torch.ones(1))

            def reconstruct(self, x):
                return x.detach() + 0.5  # no gradient, and outside [0, 1]

            def loss(self, batch, step=None):
                return {"loss": (self.reconstruct(batch) - batch).pow(2).mean()}
    """))
    (tmp_path / "test_grey.py").write_text(textwrap.dedent("""
        from broken_plugin import Grey

        def test_conformance(zoo_conformance):
            zoo_conformance(Grey)
    """))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_grey.py"],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 1
    assert "ConformanceError: grey-ae:" in result.stdout
    assert "loss: grey-ae.loss() returned a 'loss' that does not require grad" in result.stdout
    assert "reconstruct: returned pixel values" in result.stdout


# The scaffold --------------------------------------------------------------------------------------------------

def test_new_plugin_installs_and_passes_as_generated(tmp_path):
    out = tmp_path / "zoo-tiny-ae"
    subprocess.run([sys.executable, "-m", "zoo.cli", "new-plugin", "tiny-ae", "--out", str(out)], check=True,
                   capture_output=True)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "README.md", "pyproject.toml", "tests/test_conformance.py", "zoo_tiny_ae/__init__.py"]
    pip_install(out)
    try:
        listed = subprocess.run([sys.executable, "-m", "zoo.cli", "list", "--architectures", "--json"],
                                capture_output=True, text=True, check=True).stdout
        assert {"architecture": "tiny-ae", "tasks": "reconstruct, encode, decode, anomaly-score",
                "plugin": "tiny-ae"} in json.loads(listed)
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--zoo-package"],
                                cwd=out, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "2 passed" in result.stdout
    finally:
        pip_uninstall("zoo-tiny-ae", modules=("zoo_tiny_ae",))


@pytest.mark.parametrize("name, message", [
    ("Bad_Name", "must be lowercase words joined by hyphens"),
    ("conv-vae", "architecture 'conv-vae' is already installed"),
])
def test_new_plugin_refuses_bad_names(tmp_path, name, message):
    result = subprocess.run([sys.executable, "-m", "zoo.cli", "new-plugin", name, "--out", str(tmp_path / "p")],
                            capture_output=True, text=True)
    assert result.returncode == 1 and message in result.stderr
    assert not (tmp_path / "p").exists()


def test_new_plugin_will_not_overwrite(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    result = subprocess.run([sys.executable, "-m", "zoo.cli", "new-plugin", "other-ae", "--out", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "already exists and is not empty" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_a_model_no_metric_set_applies_to_passes_with_evaluation_reported_as_not_run(tmp_path):
    class EncoderOnly(Broken):
        architecture = "encoder-only"
        tasks = ("encode",)

        def encode(self, x):
            return self.encoder(x.flatten(1))[:, :4]

        def loss(self, batch, step=None):
            return {"loss": self.encode(batch).pow(2).mean()}

        def save_pretrained(self, directory, metadata=None):
            return zoo.Autoencoder.save_pretrained(self, directory, metadata)

    report = check_architecture(EncoderOnly, workdir=tmp_path)
    assert "evaluation" not in report.passed and report.skipped == [
        "evaluation: no `zoo eval` metric set applies; declare 'reconstruct' (for the default reconstruction "
        "metrics) or register a metric set"]


def test_a_sampling_reconstruction_is_not_mistaken_for_batch_dependence(tmp_path):
    class Noisy(Broken):
        architecture = "noisy-ae"
        tasks = ("reconstruct",)

        def reconstruct(self, x):
            return (x + 0.1 * torch.randn_like(x)).clamp(0, 1)

        def loss(self, batch, step=None):
            return {"loss": (self.decoder(self.encoder(batch.flatten(1))[:, :4]) - batch.flatten(1)).pow(2).mean()}

        def save_pretrained(self, directory, metadata=None):
            return zoo.Autoencoder.save_pretrained(self, directory, metadata)

    assert "tasks" in check_architecture(Noisy, workdir=tmp_path).passed
