"""The example third-party packages in examples/ (beta_vae, vq_ae), pip-installed into this venv for real."""

import json
import subprocess
import sys

import pytest
import torch

import zoo

ZOO = [sys.executable, "-m", "zoo.cli"]


def run_zoo(*args: str) -> str:
    result = subprocess.run([*ZOO, *args], capture_output=True, text=True, check=True)
    return result.stdout


def test_example_appears_in_list_and_plugins(installed_examples):
    listed = run_zoo("list", "--architectures")
    for name in ("dense-vae", "conv-vae", "denoising-ae", "colorization-ae", "beta-vae"):
        assert name in listed
    plugins = {p["name"]: p for p in json.loads(run_zoo("plugins", "--json"))}
    beta = plugins["beta-vae"]
    assert (beta["distribution"], beta["version"]) == ("zoo-beta-vae", "0.1.0")
    assert beta["registered"] == ["beta-vae"] and beta["hooks"] == ["register_architectures"] and not beta["errors"]


def test_example_round_trips_through_save_and_load(installed_examples, tmp_path):
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


def test_example_trains_with_its_own_objective(installed_examples):
    torch.manual_seed(0)
    model = zoo.create("beta-vae", hidden=[32], latent_dim=3, capacity=5.0, capacity_steps=100)
    terms = model.loss((torch.rand(8, 1, 28, 28) > 0.5).float(), step=50)
    expected = terms["reconstruction"] + 100.0 * (terms["kl"] - 2.5).abs()
    torch.testing.assert_close(terms["loss"], expected)


# vq-ae: the example that is not a VAE --------------------------------------------------------------------------

def test_vq_example_registers_its_architecture_and_metric_set(installed_examples):
    plugins = {p["name"]: p for p in json.loads(run_zoo("plugins", "--json"))}
    vq = plugins["vq-ae"]
    assert (vq["distribution"], vq["status"]) == ("zoo-vq-ae", "loaded")
    assert vq["hooks"] == ["register_architectures", "register_metrics"] and vq["registered"] == ["vq-ae", "codebook"]
    model = zoo.create("vq-ae", preset="mnist")
    assert model.latent_dim == 49 and model.tasks == ("reconstruct", "encode", "decode", "anomaly-score")


def test_vq_codes_decode_back_and_a_latent_is_a_grid_of_indices(installed_examples):
    torch.manual_seed(0)
    model = zoo.create("vq-ae", codebook_size=16).eval()
    x = torch.rand(3, 1, 28, 28)
    codes = model.encode(x)
    assert codes.shape == (3, 49) and torch.equal(codes, codes.round()) and 0 <= codes.min() <= codes.max() <= 15
    assert torch.equal(model.decode(codes), model.reconstruct(x))
    assert torch.equal(model.decode(codes + 0.3), model.decode(codes))  # decode rounds to the nearest code


def test_vq_dead_codes_are_reset_by_the_trainer_hook(installed_examples, tmp_path):
    from zoo.data import ImageDataset
    from zoo.training import TrainConfig, Trainer

    torch.manual_seed(0)
    model = zoo.create("vq-ae", codebook_size=8, channels=[8], embedding_dim=4, dead_code_steps=2)
    with torch.no_grad():
        model.codebook[7] = 1e3  # far from every encoder output: never chosen
    images = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8)
    data = ImageDataset(images, torch.zeros(16, dtype=torch.int64), name="t", split="train", checksum="-")
    Trainer(model, data, None, TrainConfig(epochs=1, batch_size=4), tmp_path, data_name="t", progress=False,
            log=lambda _: None).fit()
    live = model.codebook[:7].detach()
    distance_to_live = (model.codebook[7].detach() - live).norm(dim=1).min()
    assert distance_to_live < 0.1, "the dead code should have been moved next to a code in use"
    assert int(model.steps_unused.max()) < 2


def test_zoo_eval_runs_the_plugins_metrics_and_the_default_ones(installed_examples, tmp_path):
    """A non-VAE plugin through the CLI: train on real MNIST, evaluate, package."""
    run = tmp_path / "run"
    run_zoo("train", "vq-ae", "--data", "mnist", "--set", "codebook_size=16", "--epochs", "1", "--limit", "512",
            "--val-limit", "256", "--batch-size", "64", "--out", str(run), "--no-progress")
    record = json.loads(run_zoo("eval", str(run), "--limit", "200", "--json"))
    assert record["metric_sets"] == ["codebook", "reconstruction"]
    assert record["headline"]["metric"] == "codebook_perplexity"
    metrics = record["metrics"]
    assert 1 <= metrics["codebook_perplexity"] <= 16 and 0 < metrics["codebook_used_fraction"] <= 1
    assert metrics["reconstruct_psnr"] > 5 and 0 < metrics["reconstruct_mse"] < 0.25
    archive = run_zoo("package", str(run), "--out", str(tmp_path / "store"))
    assert (tmp_path / "store" / "run.mar").is_file(), archive
