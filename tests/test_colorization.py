"""Colorization: the colour metrics, the classification objective of colorization-ae, and the shipped model."""

import math

import pytest
import torch

import zoo
import zoo.data
from zoo.components import class_rebalancing_weights
from zoo.components.color import gray_lightness, rgb_to_gray, rgb_to_lab
from zoo.evaluation.colour import (ab_correlation, colourfulness, colourfulness_ratio, constant_ab, mean_ab, pearson,
                                   train_mean_baseline)
from zoo.evaluation.metrics import psnr

# --- colour metrics ---------------------------------------------------------------------------------


def test_colourfulness_matches_a_hand_computed_case():
    # two pixels, pure red (255, 0, 0) and pure blue (0, 0, 255), on the 0-255 scale
    image = torch.tensor([[255, 0], [0, 0], [0, 255]], dtype=torch.uint8).view(1, 3, 1, 2)
    # rg = R - G = (255, 0); yb = (R + G) / 2 - B = (127.5, -255)
    # var(rg) = 127.5^2 = 16256.25, var(yb) = 191.25^2 = 36576.5625; mean(rg) = 127.5, mean(yb) = -63.75
    expected = math.sqrt(16256.25 + 36576.5625) + 0.3 * math.sqrt(127.5**2 + 63.75**2)  # 229.854 + 0.3 * 142.549

    assert colourfulness(image).item() == pytest.approx(expected, rel=1e-12)
    assert colourfulness(image.double() / 255).item() == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(272.6187, abs=1e-4)


def test_grey_images_have_no_colourfulness_and_ratios_compare_with_the_truth():
    grey = torch.rand(4, 1, 8, 8).expand(-1, 3, -1, -1)
    colour = torch.rand(4, 3, 8, 8)

    assert torch.all(colourfulness(grey) == 0)
    assert colourfulness_ratio(grey, colour) == 0
    assert colourfulness_ratio(colour, colour) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no colour at all"):
        colourfulness_ratio(colour, grey)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        colourfulness(torch.rand(2, 1, 4, 4))


def test_ab_correlation_and_pearson():
    truth = torch.rand(6, 3, 8, 8)
    shuffled = truth[:, [1, 0, 2]]  # red and green swapped: a (green-red) flips sign

    assert ab_correlation(truth, truth) == pytest.approx({"a": 1.0, "b": 1.0})
    assert ab_correlation(shuffled, truth)["a"] < -0.5
    grey_copy = rgb_to_gray(truth).expand(-1, 3, -1, -1)  # a = b = 0 up to rounding: no correlation to speak of
    assert all(math.isnan(r) for r in ab_correlation(grey_copy, truth).values())
    # centred: (-1, 0, 1) and (-13/6, -1/6, 7/3): r = 4.5 / sqrt(2 * 61/6)
    assert pearson(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 6.5])) == pytest.approx(0.997949, abs=1e-6)
    assert math.isnan(pearson(torch.ones(5), torch.rand(5)))


def test_train_mean_baseline_keeps_lightness_and_paints_the_mean_ab():
    orange = torch.tensor([0.9, 0.5, 0.1]).view(1, 3, 1, 1).expand(5, 3, 4, 4)
    ab = mean_ab((orange * 255).round().to(torch.uint8), batch_size=2)
    true_ab = rgb_to_lab((orange * 255).round() / 255)[0, 1:, 0, 0].double()

    mid_grey = torch.full((3, 3, 8, 8), 0.55)  # a lightness at which this orange is inside the sRGB gamut
    out = train_mean_baseline(mid_grey, ab)
    grey = constant_ab(rgb_to_gray(torch.rand(3, 3, 8, 8)), torch.zeros(2))

    assert torch.allclose(ab, true_ab, atol=1e-6)
    assert out.shape == (3, 3, 8, 8)
    lab = rgb_to_lab(out.double())
    assert torch.allclose(lab[:, 1:], ab.view(1, 2, 1, 1).expand(3, 2, 8, 8), atol=1e-3)
    assert torch.allclose(lab[:, :1], rgb_to_lab(mid_grey.double())[:, :1], atol=1e-3)
    assert torch.allclose(grey, grey[:, :1].expand(-1, 3, -1, -1), atol=1e-6)  # a = b = 0 is the grey copy


# --- the classification objective ------------------------------------------------------------------


def small(objective: str, **config) -> torch.nn.Module:
    torch.manual_seed(0)
    return zoo.create("colorization-ae", channels=[8, 16], objective=objective, **config)


def test_default_objective_is_the_regression_one_the_old_weights_have():
    model = zoo.create("colorization-ae")
    head = model.merge[-1][-1]

    assert model.config.objective == "regression" and head.out_channels == 2 and head.kernel_size == (3, 3)
    assert not any("centres" in key for key in model.state_dict())  # the bins are not part of the weights
    with pytest.raises(ValueError, match="objective='classification'"):
        model.ab_logits(torch.rand(1, 1, 32, 32))


def test_soft_bins_encode_the_true_ab_exactly():
    model = small("classification", ab_bins=12)
    target = torch.empty(3, 2, 4, 4).uniform_(-0.9, 0.9)  # a/b in units of 100, inside the bins' range

    index, weight = model._soft_bins(target)
    logits = torch.full((3, 12 * 12, 4, 4), -1e4).scatter(1, index, weight.clamp(min=1e-30).log())

    assert torch.allclose(weight.sum(1), torch.ones(3, 4, 4))
    assert torch.allclose(model.annealed_mean(logits, temperature=1.0), target, atol=1e-5)  # the mean is exact


def test_annealed_mean_moves_from_the_mean_to_the_mode():
    model = small("classification", ab_bins=4)
    logits = torch.full((1, 16, 1, 1), -1e4)
    logits[0, 0], logits[0, 15] = math.log(0.7), math.log(0.3)  # bins (a, b) = (-1.1, -1.1) and (1.1, 1.1)

    mean = model.annealed_mean(logits, temperature=1.0).flatten()
    sharp = model.annealed_mean(logits, temperature=0.05).flatten()

    assert torch.allclose(mean, torch.tensor([0.7 * -1.1 + 0.3 * 1.1] * 2), atol=1e-5)
    assert torch.allclose(sharp, torch.tensor([-1.1, -1.1]), atol=1e-4)


def test_classification_objective_trains_and_saturates_where_regression_greys():
    # one grey level, two colours of the same luma seen 3:1: regression learns their greyish mean colour,
    # the annealed mean of the classification objective the likelier colour
    red, green = torch.tensor([0.8, 0.3, 0.3]), torch.tensor([0.2, 0.625, 0.2])  # luma 0.4495 both
    batch = torch.stack([red] * 12 + [green] * 4).view(16, 3, 1, 1).expand(16, 3, 8, 8).contiguous()
    assert torch.allclose(rgb_to_gray(batch), torch.full((16, 1, 8, 8), 0.4495), atol=1e-4)

    results = {}
    for objective in ("regression", "classification"):
        model = small(objective, ab_bins=12, temperature=0.2)
        optimizer = torch.optim.Adam(model.parameters(), 3e-3)
        for _ in range(80):
            loss = model.loss(batch)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            results[objective] = colourfulness_ratio(model.colorize(rgb_to_gray(batch)), batch)
            terms = model.loss(batch)
        assert "ab_mse" in terms and torch.isfinite(terms["loss"])

    assert results["classification"] > results["regression"] + 0.2, results


def test_rebalancing_moves_the_predicted_distribution_towards_the_rare_colour():
    # one grey seen as red 12 times and as green 4. Plain cross-entropy learns the bins' frequencies, so
    # its mean colour is 1/4 of the way from red to green; weighted by 1/(0.99 p + 0.01/Q), the optimum
    # puts each bin's probability at its weight x frequency, and the mean moves to where that says
    red, green = torch.tensor([0.8, 0.3, 0.3]), torch.tensor([0.2, 0.625, 0.2])
    batch = torch.stack([red] * 12 + [green] * 4).view(16, 3, 1, 1).expand(16, 3, 8, 8).contiguous()
    true_ab = rgb_to_lab(batch)[:, 1:, 0, 0] / 100
    red_ab, green_ab = true_ab[0], true_ab[-1]

    def share_of_green(ab: torch.Tensor) -> float:
        return float((ab - red_ab) @ (green_ab - red_ab) / (green_ab - red_ab).pow(2).sum())

    learnt, optimum = {}, {}
    for rebalance in (0.0, 0.99):
        model = small("classification", ab_bins=12, rebalance=rebalance)
        optimizer = torch.optim.Adam(model.parameters(), 1e-2)
        for step in range(300):
            loss = model.loss(batch, step=step)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            logits = model.ab_logits(gray_lightness(rgb_to_gray(batch[:1])))
        learnt[rebalance] = share_of_green(model.annealed_mean(logits, 1.0)[0, :, 0, 0])
        index, weight = model._soft_bins(true_ab.view(16, 2, 1, 1))
        frequency = torch.zeros(144).index_add_(0, index.flatten(), weight.flatten())
        if rebalance:
            assert torch.allclose((model.ab_counts / model.ab_counts.sum()).float(), frequency / frequency.sum())
            frequency = frequency * class_rebalancing_weights(frequency, rebalance)
        optimum[rebalance] = share_of_green((frequency / frequency.sum()) @ model.ab_centres)

    assert optimum[0.0] == pytest.approx(0.25, abs=1e-4)  # the soft bins keep the mean exact
    assert optimum[0.99] > 0.45
    assert learnt == pytest.approx(optimum, abs=0.05)


def test_rebalancing_counts_the_training_bins_and_only_in_training():
    model = small("classification", ab_bins=6, rebalance=0.5)
    batch = torch.rand(4, 3, 8, 8)
    index, weight = model._soft_bins(rgb_to_lab(batch)[:, 1:] / 100)
    expected = torch.zeros(36, dtype=torch.float64).index_add_(0, index.flatten(), weight.flatten().double())

    model.loss(batch, step=0)  # loss_stride 2: step 0 counts every 2nd pixel of every 2nd row, from (0, 0)
    seen = model.ab_counts.clone()
    model.eval()
    terms = model.loss(batch)

    assert "ab_counts" in model.state_dict() and 0 < seen.sum() < expected.sum()
    assert torch.equal(model.ab_counts, seen)  # validation does not count
    assert torch.isfinite(terms["loss"]) and "cross_entropy" in terms
    model.train()
    model.ab_counts.zero_()
    model.config.loss_stride = 1
    model.loss(batch, step=0)
    assert torch.allclose(model.ab_counts, expected)


def test_flip_augmentation_mirrors_training_batches_only():
    from zoo.components import random_flip

    flipping = small("classification", ab_bins=6, augment_flip=True)
    plain = small("classification", ab_bins=6)
    plain.load_state_dict(flipping.state_dict())
    batch = torch.rand(8, 3, 8, 8)

    torch.manual_seed(5)
    augmented = flipping.loss(batch, step=3)["loss"]
    torch.manual_seed(5)
    expected = plain.loss(random_flip(batch), step=3)["loss"]
    assert torch.equal(augmented, expected) and not torch.equal(augmented, plain.loss(batch, step=3)["loss"])

    flipping.eval()
    plain.eval()
    state = torch.get_rng_state()
    assert torch.equal(flipping.loss(batch)["loss"], plain.loss(batch)["loss"])  # validation is not moved
    assert torch.equal(torch.get_rng_state(), state)


def test_training_with_rebalancing_and_flips_resumes_exactly_after_an_interruption(tmp_path):
    import os
    import signal

    from zoo.data import ImageDataset
    from zoo.training import Interrupted, TrainConfig, Trainer

    images = torch.randint(0, 256, (48, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    labels = torch.zeros(48, dtype=torch.int64)
    fit = ImageDataset(images, labels, name="tiny", split="fit", checksum="-")
    val = ImageDataset(images[:16], labels[:16], name="tiny", split="val", checksum="-")

    def train(out, interrupt_at=None, resume=False):
        model = small("classification", ab_bins=6, image_size=8, rebalance=0.5, augment_flip=True)
        if interrupt_at is not None:
            model.on_train_step_end = lambda step, terms: step == interrupt_at and os.kill(os.getpid(), signal.SIGINT)
        config = TrainConfig(epochs=3, batch_size=16, val_batch_size=16, seed=0)
        Trainer(model, fit, val, config, out, data_name="tiny", progress=False, log=lambda _: None).fit(resume=resume)
        return model

    straight = train(tmp_path / "straight")
    with pytest.raises(Interrupted):  # mid epoch 2: the counts so far are checkpointed with the weights
        train(tmp_path / "resumed", interrupt_at=5)
    assert 0 < float(zoo.load(tmp_path / "resumed").ab_counts.sum()) < float(straight.ab_counts.sum())
    resumed = train(tmp_path / "resumed", resume=True)
    for name, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name


def test_classification_config_passes_the_architecture_contract():
    from zoo.testing.conformance import check_architecture

    check_architecture("colorization-ae", config={"channels": [8, 16], "objective": "classification", "ab_bins": 6})
    check_architecture("colorization-ae", config={"channels": [8, 16], "objective": "classification", "ab_bins": 6,
                                                  "rebalance": 0.5, "augment_flip": True})


def test_bad_objective_settings_are_named():
    from zoo.errors import ConfigError

    with pytest.raises(ConfigError, match="objective"):
        zoo.create("colorization-ae", objective="hinge")
    with pytest.raises(ConfigError, match="ab_bins"):
        zoo.create("colorization-ae", ab_bins=1)
    with pytest.raises(ConfigError, match="temperature"):
        zoo.create("colorization-ae", temperature=0.0)
    with pytest.raises(ConfigError, match="rebalance"):
        zoo.create("colorization-ae", objective="classification", rebalance=1.5)
    with pytest.raises(ConfigError, match="rebalance.*classification"):
        zoo.create("colorization-ae", rebalance=0.5)  # regression has no bins to weigh


# --- the shipped model, on real held-out photos -----------------------------------------------------

#: Measured on all 8,704 test patches of the 34 test photos (model_cards/colorization-ae-photos/
#: colorization_results.json): PSNR 23.05 dB against 22.47 dB for the train-mean a/b baseline (+0.59 dB),
#: colourfulness 54% of the truth's against 27%. On the sample below (every 16th patch) the same model
#: measures +0.53 dB and 54%; the floors leave room for arithmetic noise, not for a worse model.
SAMPLE_EVERY = 16
MIN_PSNR_GAIN = 0.45
MIN_COLOURFULNESS = 0.50


@pytest.mark.skipif(not zoo.data.is_fetched("photos"),
                    reason="photos not fetched: run `zoo data fetch photos` (make test does)")
def test_shipped_model_beats_the_train_mean_baseline_on_test_photos():
    torch.set_num_threads(1)
    test = zoo.data.load("photos", "test")
    x = test.images[::SAMPLE_EVERY].float() / 255  # 544 patches, 16 from each of the 34 test photos
    ab = mean_ab(zoo.data.load("photos", "fit").images)
    model = zoo.load("colorization-ae-photos")

    with torch.no_grad():
        colour = model.colorize(rgb_to_gray(x))
    baseline = train_mean_baseline(x, ab).float()
    gain = float(psnr(colour, x).mean() - psnr(baseline, x).mean())

    assert gain >= MIN_PSNR_GAIN, f"model PSNR only {gain:.2f} dB above the train-mean a/b baseline"
    assert colourfulness_ratio(colour, x) >= MIN_COLOURFULNESS > colourfulness_ratio(baseline, x)


# --- the benchmark's helpers ----------------------------------------------------------------------------


def _benchmark():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "colorization.py"
    spec = importlib.util.spec_from_file_location("colorization_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_snapshot_keeps_the_weights_of_every_finished_epoch_of_a_running_training(tmp_path):
    import argparse
    import threading
    import time

    from zoo.checkpoint import sha256_file
    from zoo.training.state import write_checkpoint

    benchmark = _benchmark()
    run, into = tmp_path / "run", tmp_path / "epochs"
    model = small("classification", ab_bins=6)

    def checkpoint(epoch: int, batch_in_epoch: int = 0) -> None:
        with torch.no_grad():  # every checkpoint's weights differ: bias = epoch + batch / 10
            model.merge[-1][-1].bias.fill_(epoch + batch_in_epoch / 10)
        write_checkpoint(run, f"step-{epoch}-{batch_in_epoch}", model, {}, {},
                         {"epoch": epoch, "batch_in_epoch": batch_in_epoch, "global_step": 10 * epoch})

    checkpoint(1)
    follower = threading.Thread(target=benchmark.snapshot_command, args=(
        argparse.Namespace(run=str(run), epochs=3, into=str(into), prefix="a-", poll=0.02),))
    follower.start()
    # epoch 2's end is never seen: the run is stopped 5 batches into epoch 3 (a checkpoint of 2 epochs and 5
    # batches, which are not epoch 2's weights), then resumed to the end of epoch 3
    for epoch, batch in ((2, 5), (3, 0)):
        time.sleep(0.3)
        checkpoint(epoch, batch)
    follower.join(timeout=30)

    assert not follower.is_alive()
    assert sorted(p.name for p in into.iterdir()) == ["a-epoch-1", "a-epoch-3"]
    for epoch in (1, 3):
        copy = zoo.load(into / f"a-epoch-{epoch}")
        assert float(copy.merge[-1][-1].bias[0].detach()) == epoch
    assert sha256_file(into / "a-epoch-3" / "model.safetensors") == sha256_file(
        run / "checkpoints" / "step-3-0" / "model.safetensors")

    # a run that ends (writes its recipe) before the asked-for epoch does not keep the follower waiting
    (run / "recipe.json").write_text("{}")
    benchmark.snapshot_command(argparse.Namespace(run=str(run), epochs=9, into=str(into), prefix="a-", poll=0.02))


def test_card_lines_give_the_verdict_against_both_targets():
    benchmark = _benchmark()

    def method(psnr, colour, r=0.1):
        return {"psnr": psnr, "ssim": 0.8, "colourfulness_pct_of_truth": colour, "r_a": r, "r_b": r}

    result = {"patches": 512, "photos": 2, "split": "test",
              "overall": {"model": method(20.0, 52.0), "grey copy": method(21.0, 0.0, math.nan),
                          "train-mean a/b": method(18.5, 20.0)},
              "per_photo": {"x.png": {"model": method(19.0, 40.0), "grey copy": method(20.0, 0.0, None),
                                      "train-mean a/b": method(18.0, 10.0)}}}
    lines = benchmark.card_lines(result)

    assert lines[0] == "On 512 patches of the 2 held-out test photos:"
    assert lines[2] == "grey copy: PSNR 21.00 dB, SSIM 0.800, colourfulness 0% of the truth's"  # no r of a constant
    assert "1.50 dB above the train-mean a/b baseline (at least 1 dB was aimed for: met)" in lines[4]
    assert "1.00 dB below the grey copy" in lines[4] and "52% of the truth's (50% was aimed for: met)" in lines[4]
    assert lines[5].startswith("x.png: PSNR model 19.00 / grey 20.00 / train-mean 18.00 dB; colourfulness 40%")
    result["overall"]["model"] = method(19.0, 49.0)
    assert "(at least 1 dB was aimed for: missed)" in benchmark.card_lines(result)[4]
    assert "(50% was aimed for: missed)" in benchmark.card_lines(result)[4]


def test_figure_shows_every_photo_in_bands_of_grey_model_truth(tmp_path):
    import numpy as np
    from PIL import Image

    from zoo.images import grid_cell

    benchmark = _benchmark()
    photos, per_photo = benchmark.FIGURE_WIDTH + 2, benchmark.FIGURE_PATCH + 1
    labels = torch.arange(photos).repeat_interleave(per_photo)
    truth = (labels.float() / photos).view(-1, 1, 1, 1).expand(-1, 3, 4, 4).clone()
    out = {"truth": truth, "grey copy": truth * 0.5, "model": truth * 0.25}

    path = benchmark.figure({"_labels": labels, "_outputs": out}, tmp_path / "grid.png")

    grid = np.asarray(Image.open(path).convert("RGB")).astype(float) / 255
    for photo in (0, benchmark.FIGURE_WIDTH - 1, benchmark.FIGURE_WIDTH + 1):
        band, column = divmod(photo, benchmark.FIGURE_WIDTH)
        for row, factor in enumerate((0.5, 0.25, 1.0)):  # grey copy, model, truth
            cell = grid_cell(grid, 3 * band + row, column, 4, 4, scale=3)
            assert np.allclose(cell, factor * photo / photos, atol=1 / 255), (photo, row)
    assert np.allclose(grid_cell(grid, 5, benchmark.FIGURE_WIDTH - 1, 4, 4, scale=3), 1.0)  # padding is white
