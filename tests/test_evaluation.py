"""Evaluation metrics and the `zoo eval` runner on tiny models and data."""

import json
import math

import pytest
import torch
from click.testing import CliRunner

import zoo
import zoo.data
from zoo.cli import main
from zoo.components.color import rgb_to_gray
from zoo.evaluation import evaluate, metric_sets, psnr, ssim


def dataset(channels: int, size: int, n: int = 24, name: str = "fake") -> zoo.data.ImageDataset:
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)
    return zoo.data.ImageDataset(images, torch.zeros(n, dtype=torch.int64), name=name, split="test", checksum="c" * 64)


def test_psnr_matches_its_definition():
    x = torch.zeros(2, 1, 4, 4)
    assert psnr(x + 0.1, x) == pytest.approx(torch.tensor([20.0, 20.0]), abs=1e-4)
    assert float(psnr(x, x)[0]) == pytest.approx(100.0)  # identical images are capped, not inf


def test_ssim_is_one_for_identical_images_and_drops_with_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 16, 16, generator=g)
    assert torch.allclose(ssim(x, x), torch.ones(3))
    noisy = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    assert (ssim(noisy, x) < 0.9).all()


def test_metric_sets_come_from_declared_capabilities():
    assert metric_sets(zoo.create("dense-vae", image_size=8, hidden=[8], latent_dim=2)) == ["likelihood"]
    assert metric_sets(zoo.create("denoising-ae", image_size=8, channels=[4], hidden=0, latent_dim=4)) == ["denoise"]
    assert metric_sets(zoo.create("colorization-ae", image_size=8, channels=[4, 8])) == ["colorize"]


def test_vae_metrics_are_consistent_and_seeded():
    torch.manual_seed(0)
    model = zoo.create("dense-vae", image_size=8, hidden=[16], latent_dim=2)
    data = dataset(1, 8)
    result = evaluate(model, data, k=64, seed=0)
    m = result["metrics"]
    assert result["binarized"] is True and result["k"] == 64 and result["seed"] == 0
    assert result["data_checksum"] == "c" * 64 and result["num_images"] == 24
    assert m["neg_elbo"] == pytest.approx(m["reconstruction_bce"] + m["kl"], rel=1e-6)
    assert 0 < m["nll_iwae"] < m["neg_elbo"]  # the IWAE bound with k=64 is tighter than the ELBO
    assert m["nll_iwae"] < 8 * 8 * math.log(2) * 2  # a sane value in nats for 64 binary pixels
    assert result["headline"] == {"name": "test NLL (IWAE, k=64)", "metric": "nll_iwae", "value": m["nll_iwae"],
                                  "unit": "nats", "higher_is_better": False}
    assert evaluate(model, data, k=64, seed=0)["metrics"] == m
    assert evaluate(model, data, k=64, seed=1)["metrics"] != m


def test_denoise_metrics_compare_noisy_and_denoised_at_the_model_noise():
    torch.manual_seed(0)
    model = zoo.create("denoising-ae", image_size=8, channels=[4], hidden=0, latent_dim=4, noise_level=0.5)
    data = dataset(1, 8)
    m = evaluate(model, data, seed=5)["metrics"]
    clean = data.images.float() / 255
    noisy = model.corrupt(clean, generator=torch.Generator().manual_seed(5))
    assert m["psnr_noisy"] == pytest.approx(float(psnr(noisy, clean).double().mean()), rel=1e-6)
    assert m["psnr_gain"] == pytest.approx(m["psnr_denoised"] - m["psnr_noisy"])
    assert -1 <= m["ssim_denoised"] <= 1 and -1 <= m["ssim_noisy"] <= 1
    quieter = evaluate(zoo.create("denoising-ae", image_size=8, channels=[4], hidden=0, latent_dim=4,
                                  noise_level=0.1), data, seed=5)["metrics"]
    assert quieter["psnr_noisy"] > m["psnr_noisy"] + 5  # the noise level comes from the model


def test_colorize_metrics_include_the_grey_copy_baseline():
    torch.manual_seed(0)
    model = zoo.create("colorization-ae", image_size=8, channels=[4, 8])
    data = dataset(3, 8)
    m = evaluate(model, data)["metrics"]
    rgb = data.images.float() / 255
    baseline = rgb_to_gray(rgb).expand(-1, 3, -1, -1)
    assert m["psnr_gray_baseline"] == pytest.approx(float(psnr(baseline, rgb).double().mean()), rel=1e-6)
    assert m["ssim_gray_baseline"] == pytest.approx(float(ssim(baseline, rgb).double().mean()), rel=1e-5)
    assert set(m) == {"psnr_colorized", "psnr_gray_baseline", "ssim_colorized", "ssim_gray_baseline"}


def test_eval_rejects_data_of_the_wrong_shape():
    model = zoo.create("dense-vae", image_size=8, hidden=[8], latent_dim=2)
    with pytest.raises(zoo.errors.ZooError, match="shape"):
        evaluate(model, dataset(1, 16))


def test_cli_eval_prints_json_and_writes_the_record(tmp_path, monkeypatch):
    torch.manual_seed(0)
    zoo.create("dense-vae", image_size=8, hidden=[16], latent_dim=2).save_pretrained(tmp_path / "m")
    monkeypatch.setattr(zoo.data, "load", lambda name, split="train", download=False: dataset(1, 8, name=name))
    runner = CliRunner()
    out = tmp_path / "eval.json"
    result = runner.invoke(main, ["eval", str(tmp_path / "m"), "--data", "fake", "--k", "8", "--seed", "2",
                                  "--device", "cpu", "--json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed == json.loads(out.read_text())
    assert printed["seed"] == 2 and printed["k"] == 8 and printed["dataset"] == "fake"
    assert printed["data_checksum"] == "c" * 64 and printed["device"].startswith("cpu")
    table = runner.invoke(main, ["eval", str(tmp_path / "m"), "--k", "8", "--device", "cpu"])
    assert table.exit_code != 0 and "--data" in table.output  # the folder has no recipe or eval.json yet
    (tmp_path / "m" / "eval.json").write_text(out.read_text())
    table = runner.invoke(main, ["eval", str(tmp_path / "m"), "--k", "8", "--device", "cpu"])
    assert table.exit_code == 0, table.output
    assert "nll_iwae" in table.output and "c" * 64 in table.output and "headline" in table.output
