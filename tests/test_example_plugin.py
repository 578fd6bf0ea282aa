"""The example third-party package in examples/beta_vae, pip-installed into this venv for real."""

import importlib
import json
import subprocess
import sys

import pytest
import torch

import zoo
from tests.conftest import REPO

EXAMPLE = REPO / "examples" / "beta_vae"
ZOO = [sys.executable, "-m", "zoo.cli"]


@pytest.fixture(scope="module")
def installed_example():
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--no-deps", "--no-build-isolation", str(EXAMPLE)], check=True)
    importlib.invalidate_caches()
    zoo.plugins._host = None
    yield
    subprocess.run([*pip, "uninstall", "-y", "zoo-beta-vae"], check=True)
    importlib.invalidate_caches()
    sys.modules.pop("zoo_beta_vae", None)
    zoo.plugins._host = None


def run_zoo(*args: str) -> str:
    result = subprocess.run([*ZOO, *args], capture_output=True, text=True, check=True)
    return result.stdout


def test_example_appears_in_list_and_plugins(installed_example):
    listed = run_zoo("list", "--architectures")
    for name in ("dense-vae", "conv-vae", "denoising-ae", "colorization-ae", "beta-vae"):
        assert name in listed
    plugins = {p["name"]: p for p in json.loads(run_zoo("plugins", "--json"))}
    beta = plugins["beta-vae"]
    assert (beta["distribution"], beta["version"]) == ("zoo-beta-vae", "0.1.0")
    assert beta["registered"] == ["beta-vae"] and beta["hooks"] == ["register_architectures"] and not beta["errors"]


def test_example_round_trips_through_save_and_load(installed_example, tmp_path):
    torch.manual_seed(0)
    model = zoo.create("beta-vae", hidden=[32], latent_dim=3).eval()
    assert model.tasks == ("reconstruct", "encode", "decode", "sample", "anomaly-score")
    model.save_pretrained(tmp_path)
    loaded = zoo.load(tmp_path)
    x = torch.rand(5, 1, 28, 28)
    assert type(loaded).__module__ == "zoo_beta_vae"
    assert torch.equal(model.reconstruct(x), loaded.reconstruct(x))
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    assert torch.equal(model.sample(3, generator=g()), loaded.sample(3, generator=g()))


def test_example_trains_with_its_own_objective(installed_example):
    torch.manual_seed(0)
    model = zoo.create("beta-vae", hidden=[32], latent_dim=3, capacity=5.0, capacity_steps=100)
    terms = model.loss((torch.rand(8, 1, 28, 28) > 0.5).float(), step=50)
    expected = terms["reconstruction"] + 100.0 * (terms["kl"] - 2.5).abs()
    torch.testing.assert_close(terms["loss"], expected)
