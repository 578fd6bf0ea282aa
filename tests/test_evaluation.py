"""Evaluation metrics, the registered metric sets and the `zoo eval` runner on tiny models and data."""

import dataclasses
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

import zoo
import zoo.data
import zoo.plugins
from zoo.cli import main
from zoo.components.color import rgb_to_gray
from zoo.config import ModelConfig
from zoo.errors import PluginError, UnsupportedTaskError, ZooError
from zoo.evaluation import evaluate, metric_sets, psnr, ssim
from zoo.evaluation.colour import colourfulness
from zoo.metrics import Metric, MetricSet
from zoo.model import Autoencoder
from zoo.plugins import PluginWarning
from zoo.registry import Registry

STANDARD = ["likelihood", "denoise", "colorize", "reconstruction"]


def dataset(channels: int, size: int, n: int = 24, name: str = "fake", binary: bool = False) -> zoo.data.ImageDataset:
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)
    if binary:
        images = (images >= 128).to(torch.uint8) * 255
    return zoo.data.ImageDataset(images, torch.zeros(n, dtype=torch.int64), name=name, split="test", checksum="c" * 64)


@dataclasses.dataclass
class TinyConfig(ModelConfig):
    image_channels: int = 1
    image_size: int = 4
    output: str = "identity"  # identity | half | noisy


class TinyAE(Autoencoder):
    """A test architecture that declares only reconstruct/encode/decode: not a VAE, denoiser or colorizer.

    ``output`` picks what it reconstructs: the input itself, a constant 0.5, or the input plus
    noise drawn from the global RNG (a stochastic reconstruction).
    """

    architecture = "tiny-test-ae"
    config_class = TinyConfig
    tasks = ("reconstruct", "encode", "decode")

    def encode(self, x):
        return x.flatten(1)

    def decode(self, z):
        c, s = self.config.image_channels, self.config.image_size
        x = z.view(-1, c, s, s)
        if self.config.output == "half":
            return torch.full_like(x, 0.5)
        if self.config.output == "noisy":
            return (x + 0.1 * torch.randn(x.shape, device=x.device)).clamp(0, 1)
        return x


class TinyEncoder(TinyAE):
    """Declares encode/decode but not reconstruct: no standard metric set applies."""

    architecture = "tiny-test-encoder"
    tasks = ("encode", "decode")


def tiny(**config) -> TinyAE:
    return TinyAE(TinyConfig(**config))


@pytest.fixture
def extra_set(monkeypatch):
    """Factory: register a MetricSet in the live registry for this test only."""
    registry = zoo.plugins.get_host().registry
    monkeypatch.setattr(registry, "metric_sets", dict(registry.metric_sets))
    monkeypatch.setattr(registry, "owners", dict(registry.owners))
    return lambda metric_set: registry.add_metric_set(metric_set, "test")


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
    small = x[..., :4, :5]  # smaller than the 7x7 window: the largest odd window that fits (3x3)
    assert torch.allclose(ssim(small, small), torch.ones(3)) and (ssim(noisy[..., :4, :5], small) < 0.9).all()
    with pytest.raises(ValueError, match="at least 3x3 pixels, got \\(2, 5\\)"):
        ssim(x[..., :2, :5], x[..., :2, :5])


def test_the_standard_sets_are_registered_in_order_by_the_core_module():
    host = zoo.plugins.get_host()
    sets = host.registry.metric_sets
    assert list(sets)[:4] == STANDARD
    for name in STANDARD:
        record = host.records[host.registry.owners[("metric set", name)]]
        assert (record.module, record.distribution) == ("zoo.evaluation.standard", "ae-zoo")
    assert [s.general for s in sets.values()][:4] == [False, False, False, True]
    assert sets["reconstruction"].headline == "reconstruct_psnr"
    assert set(sets["reconstruction"].metrics) == {"reconstruct_bce", "reconstruct_mse", "reconstruct_psnr",
                                                    "reconstruct_ssim"}


def test_the_standard_sets_are_there_even_when_no_plugin_is_loaded(fresh_plugins, monkeypatch):
    monkeypatch.setenv("ZOO_PLUGINS", "")
    assert list(fresh_plugins.get_host().registry.metric_sets) == STANDARD
    assert evaluate(tiny(), dataset(1, 4, n=2))["metric_sets"] == ["reconstruction"]


def test_metric_sets_come_from_declared_capabilities():
    assert metric_sets(zoo.create("dense-vae", image_size=8, hidden=[8], latent_dim=2)) == ["likelihood",
                                                                                             "reconstruction"]
    assert metric_sets(zoo.create("denoising-ae", image_size=8, channels=[4], hidden=0, latent_dim=4)) == \
        ["denoise", "reconstruction"]
    # colorization-ae implements reconstruct() but does not declare it, and its input is grey, its data RGB.
    assert metric_sets(zoo.create("colorization-ae", image_size=8, channels=[4, 8])) == ["colorize"]
    assert metric_sets(tiny()) == ["reconstruction"]
    assert metric_sets(TinyEncoder(TinyConfig())) == []


def test_vae_metrics_are_consistent_and_seeded():
    torch.manual_seed(0)
    model = zoo.create("dense-vae", image_size=8, hidden=[16], latent_dim=2)
    data = dataset(1, 8)
    result = evaluate(model, data, k=64, seed=0)
    m = result["metrics"]
    assert result["binarized"] is True and result["k"] == 64 and result["seed"] == 0
    assert result["data_checksum"] == "c" * 64 and result["num_images"] == 24
    assert result["metric_sets"] == ["likelihood", "reconstruction"]
    assert list(m) == ["nll_iwae", "neg_elbo", "reconstruction_bce", "kl", "active_units", "reconstruct_bce",
                       "reconstruct_mse", "reconstruct_psnr", "reconstruct_ssim"]
    assert m["neg_elbo"] == pytest.approx(m["reconstruction_bce"] + m["kl"], rel=1e-6)
    assert 0 < m["nll_iwae"] < m["neg_elbo"]  # the IWAE bound with k=64 is tighter than the ELBO
    assert m["nll_iwae"] < 8 * 8 * math.log(2) * 2  # a sane value in nats for 64 binary pixels
    # The headline is still the likelihood's: the general reconstruction set runs last.
    assert result["headline"] == {"name": "test NLL (IWAE, k=64)", "metric": "nll_iwae", "value": m["nll_iwae"],
                                  "unit": "nats", "higher_is_better": False}
    assert result["metric_info"]["nll_iwae"]["description"].startswith("test NLL: the IWAE bound with k=64 importance")
    assert evaluate(model, data, k=64, seed=0)["metrics"] == m
    assert evaluate(model, data, k=64, seed=1)["metrics"] != m


def test_denoise_metrics_compare_noisy_and_denoised_at_the_model_noise():
    torch.manual_seed(0)
    model = zoo.create("denoising-ae", image_size=8, channels=[4], hidden=0, latent_dim=4, noise_level=0.5)
    data = dataset(1, 8)
    result = evaluate(model, data, seed=5)
    m = result["metrics"]
    assert result["headline"]["metric"] == "psnr_denoised" and result["k"] is None
    clean = data.images.float() / 255
    noisy = model.corrupt(clean, generator=torch.Generator().manual_seed(5))
    assert m["psnr_noisy"] == pytest.approx(float(psnr(noisy, clean).double().mean()), rel=1e-6)
    assert m["psnr_gain"] == pytest.approx(m["psnr_denoised"] - m["psnr_noisy"])
    assert -1 <= m["ssim_denoised"] <= 1 and -1 <= m["ssim_noisy"] <= 1
    # denoise() of this model is reconstruct(): the same output, so the same PSNR on clean input.
    with torch.no_grad():
        reconstruction = model.reconstruct(clean)
    assert m["reconstruct_psnr"] == pytest.approx(float(psnr(reconstruction, clean).double().mean()), rel=1e-6)
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
    assert set(m) == {"psnr_colorized", "psnr_gray_baseline", "ssim_colorized", "ssim_gray_baseline",
                      "colourfulness_pct_of_truth"}
    with torch.no_grad():
        colour = model.colorize(rgb_to_gray(rgb))
    assert m["colourfulness_pct_of_truth"] == pytest.approx(
        100 * float(colourfulness(colour).mean() / colourfulness(rgb).mean()), rel=1e-6)


def test_colourfulness_is_left_out_for_grey_test_images_and_near_100_for_a_perfect_colorizer():
    torch.manual_seed(0)
    model = zoo.create("colorization-ae", image_size=8, channels=[4, 8])
    data = dataset(3, 8)
    truth = data.images.float() / 255
    served = iter(truth.split(1))  # evaluate() goes through the images in order
    # an oracle: answers each grey image with the true one, so it is exactly as colourful as the truth
    model.colorize = lambda gray: torch.cat([next(served) for _ in range(len(gray))])
    assert evaluate(model, data)["metrics"]["colourfulness_pct_of_truth"] == pytest.approx(100.0)
    grey = data.images[:, :1].expand(-1, 3, -1, -1).contiguous()  # R = G = B: no colour at all
    grey_data = zoo.data.ImageDataset(grey, data.labels, name="fake", split="test", checksum="c" * 64)
    model.colorize = lambda gray: gray.expand(-1, 3, -1, -1)
    metrics = evaluate(model, grey_data)["metrics"]
    assert "colourfulness_pct_of_truth" not in metrics and metrics["psnr_colorized"] > 30


# The default reconstruction set ----------------------------------------------------------------


def test_reconstruction_set_on_a_perfect_reconstruction():
    result = evaluate(tiny(), dataset(1, 4, n=10, binary=True), batch_size=3)
    assert result["metric_sets"] == ["reconstruction"] and result["k"] is None and result["binarized"] is False
    # Binary images reconstructed exactly: no cross-entropy, no error, PSNR at its 100 dB cap, SSIM 1.
    assert result["metrics"] == pytest.approx({"reconstruct_bce": 0.0, "reconstruct_mse": 0.0,
                                               "reconstruct_psnr": 100.0, "reconstruct_ssim": 1.0})
    assert result["headline"] == {"name": "reconstruction PSNR", "metric": "reconstruct_psnr", "value": 100.0,
                                  "unit": "dB", "higher_is_better": True}
    assert result["metric_info"]["reconstruct_bce"] == {
        "description": "binary cross-entropy of reconstruct(x) vs x, summed over pixels", "unit": "nats",
        "higher_is_better": False}


def test_reconstruction_set_on_a_constant_grey_reconstruction():
    data = dataset(1, 4, n=10, binary=True)
    m = evaluate(tiny(output="half"), data, batch_size=4)["metrics"]
    assert m["reconstruct_bce"] == pytest.approx(16 * math.log(2), rel=1e-12)  # ln 2 nats for each of 16 pixels
    assert m["reconstruct_mse"] == pytest.approx(0.25, rel=1e-12)  # every binary pixel is 0.5 off
    assert m["reconstruct_psnr"] == pytest.approx(10 * math.log10(4), rel=1e-6)
    x = data.images.float() / 255
    assert m["reconstruct_ssim"] == pytest.approx(float(ssim(torch.full_like(x, 0.5), x).double().mean()), rel=1e-6)


def test_reconstruction_bce_of_an_identity_on_grey_images_is_the_pixel_entropy():
    data = dataset(1, 4, n=6)
    x = (data.images.float() / 255).double()  # evaluate() scales the uint8 images in float32
    entropy = -(x * x.clamp(min=1e-300).log() + (1 - x) * (1 - x).clamp(min=1e-300).log()).flatten(1).sum(1)
    m = evaluate(tiny(), data)["metrics"]
    assert m["reconstruct_bce"] == pytest.approx(float(entropy.mean()), rel=1e-9)
    assert m["reconstruct_mse"] == 0.0


def test_reconstruction_set_is_seeded_and_leaves_the_global_rng_alone():
    model, data = tiny(output="noisy"), dataset(1, 4, n=8)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = evaluate(model, data, seed=7, batch_size=3)["metrics"]
    assert torch.equal(torch.get_rng_state(), state)
    assert evaluate(model, data, seed=7, batch_size=3)["metrics"] == first
    assert evaluate(model, data, seed=8, batch_size=3)["metrics"] != first
    assert 0 < first["reconstruct_mse"] < 0.02  # noise of sd 0.1 (variance 0.01), partly clipped


def test_a_reconstruction_outside_the_unit_range_is_refused(extra_set):
    class Overshoot(TinyAE):
        def decode(self, z):
            return super().decode(z) * 2

    with pytest.raises(ZooError, match=r"metric set 'reconstruction' failed on 'tiny-test-ae'.*outside \[0, 1\]"):
        evaluate(Overshoot(TinyConfig()), dataset(1, 4, n=4))


# Sets that plugins register ----------------------------------------------------------------------


LATENT_PLUGIN = """
import torch
import zoo
from zoo.metrics import Metric, MetricSet


@torch.no_grad()
def run(model, images, *, k, seed, batch_size, device, chunk):
    norms = torch.cat([model.encode(images[i:i + batch_size].to(device)).flatten(1).norm(dim=1).cpu()
                       for i in range(0, len(images), batch_size)])
    return {"latent_norm": float(norms.double().mean()), "latent_dims": float(model.encode(images[:1]).shape[1])}


LATENT = MetricSet(
    name="latent-norm",
    metrics={"latent_norm": Metric("mean L2 norm of the latent codes", "", False),
             "latent_dims": Metric("length of a latent code", "", False)},
    headline="latent_norm",
    headline_name="latent norm",
    applies=lambda model: "encode" in model.tasks,
    run=run,
    task_type="image-feature-extraction",
    task_name="Latent codes",
    note="The latent norm says nothing about sample quality.",
    requires="the encode task",
)


@zoo.hookimpl
def register_metrics(register):
    register(LATENT)
"""


def test_a_plugin_metric_set_runs_through_its_entry_point(plugin_distribution):
    plugin_distribution("zoo-latent-metrics", LATENT_PLUGIN)
    host = zoo.plugins.get_host()
    assert list(host.registry.metric_sets)[:4] == STANDARD and "latent-norm" in host.registry.metric_sets
    assert host.records["zoo-latent-metrics"].registered == ["latent-norm"]
    data = dataset(1, 4, n=5)
    result = evaluate(tiny(), data, batch_size=2)
    # The plugin's set is specific, so it runs before the general reconstruction set and leads.
    assert result["metric_sets"] == ["latent-norm", "reconstruction"]
    x = data.images.float() / 255
    assert result["metrics"]["latent_norm"] == pytest.approx(float(x.flatten(1).norm(dim=1).double().mean()))
    assert result["metrics"]["latent_dims"] == 16.0
    assert result["metric_info"]["latent_norm"] == {"description": "mean L2 norm of the latent codes", "unit": "",
                                                    "higher_is_better": False}
    assert result["headline"]["name"] == "latent norm" and result["headline"]["metric"] == "latent_norm"
    # Models it does not apply to keep their sets, in order.
    assert metric_sets(zoo.create("dense-vae", image_size=8, hidden=[8], latent_dim=2)) == \
        ["likelihood", "latent-norm", "reconstruction"]
    assert metric_sets(TinyEncoder(TinyConfig())) == ["latent-norm"]


def test_a_plugin_metric_clashing_with_a_standard_one_is_refused(plugin_distribution):
    plugin_distribution("zoo-clash", LATENT_PLUGIN.replace('"latent_dims"', '"reconstruct_psnr"'))
    with pytest.warns(PluginWarning, match="metric set 'latent-norm': metric 'reconstruct_psnr' is already "
                                           "reported by metric set 'reconstruction'"):
        sets = zoo.plugins.get_host().registry.metric_sets
    assert list(sets)[:4] == STANDARD and "latent-norm" not in sets
    assert zoo.plugins.get_host().records["zoo-clash"].registered == []


@pytest.mark.parametrize("run, message", [
    (lambda *a, **kw: 1 / 0, r"metric set 'extra' failed on 'tiny-test-ae': ZeroDivisionError"),
    (lambda *a, **kw: {"extra_a": float("nan"), "extra_b": 1.0}, r"metric set 'extra': metric 'extra_a' is nan, "
                                                                 r"not a finite number"),
    (lambda *a, **kw: {"extra_a": 1.0, "extra_b": float("inf")}, r"metric set 'extra': metric 'extra_b' is inf"),
    (lambda *a, **kw: {"extra_a": 1.0}, r"metric set 'extra': run\(\) did not return metric 'extra_b'"),
    (lambda *a, **kw: {"extra_a": 1.0, "extra_b": 2.0, "extra_c": 3.0},
     r"metric set 'extra': run\(\) returned metric 'extra_c', which the set does not declare"),
    (lambda *a, **kw: {"extra_a": "high", "extra_b": 2.0}, r"metric set 'extra': metric 'extra_a' is 'high', not a number"),
    (lambda *a, **kw: [1.0, 2.0], r"metric set 'extra': run\(\) must return a dict"),
], ids=["raises", "nan", "inf", "missing", "undeclared", "not-a-number", "not-a-dict"])
def test_a_misbehaving_metric_set_names_itself_and_the_metric(extra_set, run, message):
    extra_set(MetricSet(name="extra", metrics={"extra_a": Metric("a", "", True), "extra_b": Metric("b", "", True)},
                        headline="extra_a", applies=lambda model: True, run=run))
    with pytest.raises(ZooError, match=message):
        evaluate(tiny(), dataset(1, 4, n=4))


def test_optional_metrics_may_be_left_out_and_tensors_count_as_numbers(extra_set):
    extra_set(MetricSet(name="extra", metrics={"extra_a": Metric("a", "", True),
                                               "extra_b": Metric("b", "", True, required=False)},
                        headline="extra_a", applies=lambda model: True,
                        run=lambda *a, **kw: {"extra_a": torch.tensor(0.5, dtype=torch.float64)}))
    result = evaluate(tiny(), dataset(1, 4, n=4))
    assert result["metrics"]["extra_a"] == 0.5 and "extra_b" not in result["metrics"]


def test_an_applies_that_raises_names_its_set(extra_set):
    extra_set(MetricSet(name="extra", metrics={"extra_a": Metric("a", "", True)}, headline="extra_a",
                        applies=lambda model: model.no_such_attribute, run=lambda *a, **kw: {}))
    with pytest.raises(ZooError, match="metric set 'extra': applies\\(\\) raised AttributeError"):
        metric_sets(tiny())


def test_when_no_set_applies_the_error_lists_what_each_needs():
    with pytest.raises(UnsupportedTaskError) as caught:
        evaluate(TinyEncoder(TinyConfig()), dataset(1, 4, n=4))
    message = str(caught.value)
    assert "no evaluation applies to 'tiny-test-encoder' (tasks: encode, decode;" in message
    assert "'likelihood' needs a VAE (a model implementing importance_weighted_log_likelihood())" in message
    assert "'denoise' needs the denoise task and a corrupt() method" in message
    assert "'colorize' needs the colorize task" in message
    assert "'reconstruction' needs the reconstruct task, with input_shape equal to data_shape" in message


def test_registration_validates_metric_sets():
    def make(**changes):
        fields = dict(name="extra", metrics={"extra_a": Metric("a", "", True)}, headline="extra_a",
                      applies=lambda model: True, run=lambda *a, **kw: {})
        return MetricSet(**{**fields, **changes})

    registry = Registry()
    assert registry.add_metric_set(make(), "one") == "extra"
    cases = [
        (object(), "expects zoo.metrics.MetricSet objects"),
        (make(name="Extra Set"), "metric set name must be lowercase-hyphenated, got 'Extra Set'"),
        (make(name="other", metrics={}), "metric set 'other': metrics must be a non-empty dict"),
        (make(name="other", metrics={"Other": Metric("o", "", True)}, headline="Other"),
         "metric name 'Other' must be lowercase snake_case"),
        (make(name="other", metrics={"other_a": ("o", "", True)}, headline="other_a"),
         "metric 'other_a' must be a zoo.metrics.Metric"),
        (make(name="other", metrics={"other_a": Metric("o", "", True)}, headline="other_b"),
         "headline 'other_b' must be one of its metrics"),
        (make(name="other", metrics={"other_a": Metric("o", "", True, required=False)}, headline="other_a"),
         "headline 'other_a' must be a required metric"),
        (make(name="other", metrics={"other_a": Metric("o", "", True)}, headline="other_a", run=None),
         "applies and run must be callables"),
        (make(name="other"), "metric set 'other': metric 'extra_a' is already reported by metric set 'extra'"),
        (make(metrics={"other_a": Metric("o", "", True)}, headline="other_a"),
         "metric set 'extra' is already registered by plugin 'one'"),
    ]
    for metric_set, message in cases:
        with pytest.raises(PluginError, match=message.replace("(", r"\(").replace(")", r"\)")):
            registry.add_metric_set(metric_set, "two")
    assert list(registry.metric_sets) == ["extra"]


# zoo eval --------------------------------------------------------------------------------------


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
    assert printed["metric_sets"] == ["likelihood", "reconstruction"]
    table = runner.invoke(main, ["eval", str(tmp_path / "m"), "--k", "8", "--device", "cpu"])
    assert table.exit_code != 0 and "--data" in table.output  # the folder has no recipe or eval.json yet
    (tmp_path / "m" / "eval.json").write_text(out.read_text())
    table = runner.invoke(main, ["eval", str(tmp_path / "m"), "--k", "8", "--device", "cpu"])
    assert table.exit_code == 0, table.output
    assert "nll_iwae" in table.output and "reconstruct_psnr" in table.output
    assert "c" * 64 in table.output and "headline: test NLL (IWAE, k=8)" in table.output


def test_cli_eval_help_describes_metric_sets_and_plugins():
    text = CliRunner().invoke(main, ["eval", "--help"]).output
    for phrase in ("reconstruction", "register_metrics", "likelihood", "PSNR"):
        assert phrase in text


# The IWAE bound: tiled decoder passes, fast paths, progress, automatic sizes and threads ---------


def reference_iwae(model, x, k, generator, chunk):
    """log p(x) by the IWAE bound, one image and one sample at a time, from the formulas alone.

    The noise is drawn the way the method documents it: one randn((size, N, latent)) per block of
    ``chunk`` samples, so the same generator state gives the same draws.
    """
    mu, logvar = model.posterior(x)
    eps = torch.cat([torch.randn((min(chunk, k - start), *mu.shape), generator=generator, dtype=mu.dtype)
                     for start in range(0, k, chunk)])
    out = []
    for i in range(len(x)):
        log_w = []
        for j in range(k):
            z = mu[i] + torch.exp(0.5 * logvar[i]) * eps[j, i]
            logits = model.decoder_logits(z[None])[0]
            if model.config.likelihood == "bernoulli":
                log_px_z = -F.binary_cross_entropy_with_logits(logits, x[i], reduction="sum")
            else:
                sigma = model.config.observation_sigma
                log_px_z = (-0.5 * ((x[i] - torch.sigmoid(logits)) / sigma) ** 2
                            - math.log(sigma) - 0.5 * math.log(2 * math.pi)).sum()
            log_p_z = (-0.5 * z ** 2 - 0.5 * math.log(2 * math.pi)).sum()
            log_q_z = (-0.5 * eps[j, i] ** 2 - 0.5 * logvar[i] - 0.5 * math.log(2 * math.pi)).sum()
            log_w.append(log_px_z + log_p_z - log_q_z)
        out.append(torch.logsumexp(torch.stack(log_w), 0) - math.log(k))
    return torch.stack(out)


def tiny_vaes():
    torch.manual_seed(0)
    return {
        "dense": zoo.create("dense-vae", image_size=8, hidden=[16], latent_dim=3),
        # channels [8], 2 output channels: its last convolution (8 -> 2, 3x3: 18 taps > 8) stays oneDNN's
        "conv-gaussian": zoo.create("conv-vae", image_channels=2, image_size=8, channels=[8], hidden=16,
                                    latent_dim=3, likelihood="gaussian", activation="elu"),
        # 32 -> 1 channels at the end, as conv-vae-mnist: the narrow-convolution fast path
        "conv": zoo.create("conv-vae", image_size=8, channels=[32, 32], hidden=0, latent_dim=4),
    }


@pytest.fixture(scope="module")
def vaes():
    models = tiny_vaes()
    for model in models.values():
        model.double().eval()
    return models


def binary_images(model, n, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, *model.input_shape), generator=g, dtype=torch.float64)
    return (x > 0.5).double() if model.config.likelihood == "bernoulli" else x


@pytest.mark.parametrize("name", ["dense", "conv", "conv-gaussian"])
@pytest.mark.parametrize("n, k, chunk, max_pass", [
    (5, 7, 3, None),    # k not a multiple of chunk, one pass per block
    (5, 10, 4, 5),      # a pass of one sample for each of the 5 images
    (5, 10, 10, 1),     # one decoder sample per pass
    (6, 13, 5, 17),     # passes of whole rows (2 samples x 6 images), blocks not a multiple of the pass
    (7, 9, 9, 4),       # passes of part of a row
    (3, 1, 1, None),    # k = 1: the ELBO estimate
])
def test_the_iwae_bound_matches_a_one_sample_at_a_time_reference(vaes, name, n, k, chunk, max_pass):
    model = vaes[name]
    x = binary_images(model, n)
    got = model.importance_weighted_log_likelihood(x, k, generator=torch.Generator().manual_seed(4), chunk=chunk,
                                                   max_pass=max_pass)
    with torch.no_grad():
        want = reference_iwae(model, x, k, torch.Generator().manual_seed(4), chunk)
    assert got.dtype == torch.float64 and got.shape == (n,)
    assert torch.allclose(got, want, rtol=0, atol=1e-9), (got - want).abs().max()


def test_the_iwae_bound_does_not_depend_on_the_pass_size_and_reports_progress(vaes):
    model = vaes["conv"]
    x = binary_images(model, 6)
    values, reported = [], []
    for max_pass in (None, 1, 4, 6, 7, 100):
        done = []
        values.append(model.importance_weighted_log_likelihood(x, 11, generator=torch.Generator().manual_seed(0),
                                                               chunk=4, max_pass=max_pass, progress=done.append))
        reported.append(sum(done))
        assert max(done) * 11 <= (max_pass or 24)  # no pass held more than max_pass samples
    assert all(torch.allclose(v, values[0], rtol=0, atol=1e-9) for v in values)
    assert reported == pytest.approx([6.0] * 6)  # images' worth of samples: all of them, once


def test_the_iwae_fast_paths_leave_the_model_as_it_was(vaes, tmp_path):
    model = zoo.create("conv-vae", image_size=8, channels=[32, 32], hidden=0, latent_dim=4).eval()
    before = {name: t.clone() for name, t in model.state_dict().items()}
    relus = [m for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    model.importance_weighted_log_likelihood(binary_images(model, 3).float(), 5)
    assert all(p.is_contiguous() for p in model.parameters())  # channels-last only during the call
    assert not any(m.inplace for m in relus) and all("forward" not in vars(m) for m in model.modules())
    assert all(torch.equal(before[name], t) for name, t in model.state_dict().items())
    model.save_pretrained(tmp_path / "m")  # safetensors needs contiguous tensors
    # Training afterwards still works: no inference tensors or in-place activations left behind.
    loss = model.train().loss(binary_images(model, 3).float())["loss"]
    loss.backward()


def test_an_overridden_log_likelihood_is_used_by_the_iwae_bound(vaes):
    base = vaes["dense"]

    class Tempered(type(base)):
        def log_likelihood(self, logits, x):
            return 0.5 * super().log_likelihood(logits, x)

    model = Tempered(base.config).double().eval()
    model.load_state_dict(base.state_dict())
    x = binary_images(model, 4)
    got = model.importance_weighted_log_likelihood(x, 6, generator=torch.Generator().manual_seed(2), chunk=4,
                                                   max_pass=3)
    # The same bound computed from the tempered terms by hand.
    mu, logvar = model.posterior(x)
    g = torch.Generator().manual_seed(2)
    eps = torch.cat([torch.randn((4, 4, 3), generator=g, dtype=torch.float64),
                     torch.randn((2, 4, 3), generator=g, dtype=torch.float64)])
    z = mu + torch.exp(0.5 * logvar) * eps
    with torch.no_grad():
        log_px_z = torch.stack([model.log_likelihood(model.decoder_logits(z[j]), x) for j in range(6)])
    log_w = (log_px_z - 0.5 * (z ** 2).sum(-1) + 0.5 * (eps ** 2).sum(-1) + 0.5 * logvar.sum(-1))
    assert torch.allclose(got, torch.logsumexp(log_w, 0) - math.log(6), rtol=0, atol=1e-9)


def old_likelihood_set(model, images, *, k, seed, batch_size, chunk):
    """The likelihood set as it was before the passes were tiled (the draws it makes are the contract)."""
    from zoo.components import kl_standard_normal, log_normal_standard
    from zoo.components.reparameterize import log_normal_diagonal

    gen = torch.Generator().manual_seed(seed)
    sums = {"nll_iwae": 0.0, "neg_elbo": 0.0, "reconstruction_bce": 0.0, "kl": 0.0}
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size]
            mu, logvar = model.posterior(x)
            log_weights = []
            for s in range(0, k, chunk):
                size = min(chunk, k - s)
                z = mu + torch.exp(0.5 * logvar) * torch.randn((size, *mu.shape), generator=gen)
                logits = model.decoder_logits(z.reshape(-1, mu.shape[-1]))
                targets = x.unsqueeze(0).expand(size, *x.shape).reshape(-1, *x.shape[1:])
                log_px_z = model.log_likelihood(logits, targets).view(size, -1)
                log_weights.append(log_px_z + log_normal_standard(z) - log_normal_diagonal(z, mu, logvar))
            log_px = torch.logsumexp(torch.cat(log_weights), dim=0) - math.log(k)
            z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=gen)
            recon = -model.log_likelihood(model.decoder_logits(z), x)
            kl = kl_standard_normal(mu, logvar)
            sums["nll_iwae"] += float(-log_px.double().sum())
            sums["neg_elbo"] += float((recon + kl).double().sum())
            sums["reconstruction_bce"] += float(recon.double().sum())
            sums["kl"] += float(kl.double().sum())
    return {key: value / len(images) for key, value in sums.items()}


@pytest.mark.parametrize("batch_size, chunk", [(500, 100), (24, 7), (5, 3), (1, 1), (3, 100)])
def test_the_likelihood_set_draws_as_before_whatever_the_batch_size_and_chunk(batch_size, chunk):
    torch.manual_seed(0)
    model = zoo.create("conv-vae", image_size=8, channels=[32, 32], hidden=0, latent_dim=4).eval()
    data = dataset(1, 8)
    got = evaluate(model, data, k=150, seed=3, batch_size=batch_size, chunk=chunk)["metrics"]
    images = torch.bernoulli(data.images.float() / 255, generator=torch.Generator().manual_seed(3))
    # The noise is drawn for blocks of 500 images and 100 samples: the old defaults' draws.
    want = old_likelihood_set(model, images, k=150, seed=3, batch_size=500, chunk=100)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, rel=2e-6, abs=1e-4), name


def test_active_units_count_the_latents_whose_posterior_mean_varies_over_the_images():
    """Burda et al.'s activity: Var_x(E_q[z_u]) > 0.01. Units the encoder ignores are not counted."""
    torch.manual_seed(0)
    model = zoo.create("dense-vae", image_size=8, hidden=[16], latent_dim=6).eval()
    data = dataset(1, 8)
    with torch.no_grad():
        head = model.encoder[-1]
        head.weight[:6].mul_(20.0)  # the six mean outputs: scaled up, so every unit varies ...
        head.weight[[1, 4]] = 0.0  # ... except units 1 and 4, whose mean no longer depends on x
    images = torch.bernoulli(data.images.float() / 255, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        variance = model.posterior(images)[0].double().var(0, unbiased=False)
    assert (variance > 0.01).tolist() == [True, False, True, True, False, True]
    assert evaluate(model, data, k=4, seed=0)["metrics"]["active_units"] == 4


def test_a_vae_plugin_with_the_old_iwae_signature_still_evaluates():
    class OldStyle(type(zoo.create("dense-vae", image_size=8, hidden=[8], latent_dim=2))):
        calls = []

        def importance_weighted_log_likelihood(self, x, k, generator=None, chunk=100):
            OldStyle.calls.append((len(x), chunk))
            return super().importance_weighted_log_likelihood(x, k, generator=generator, chunk=chunk)

    torch.manual_seed(0)
    model = OldStyle(zoo.create("dense-vae", image_size=8, hidden=[8], latent_dim=2).config)
    progress = []
    result = evaluate(model, dataset(1, 8, n=10), k=6, batch_size=4, chunk=5,
                      progress=lambda name, total: Recorder(name, total, progress))
    assert OldStyle.calls == [(4, 5), (4, 5), (2, 5)]  # batch_size images at a time, chunk per pass, as before
    assert math.isfinite(result["metrics"]["nll_iwae"])
    assert [p.done for p in progress if p.name == "likelihood"] == [[4, 4, 2]]


class Recorder:
    """A progress 'bar' for evaluate(progress=factory): records what a metric set reports."""

    def __init__(self, name, total, into):
        self.name, self.total, self.done, self.finished, self.closed = name, total, [], False, False
        into.append(self)

    def update(self, images):
        self.done.append(images)

    def finish(self):
        self.finished = True

    def close(self):
        self.closed = True


def test_evaluate_reports_progress_per_metric_set():
    torch.manual_seed(0)
    model = zoo.create("dense-vae", image_size=8, hidden=[16], latent_dim=2)
    bars = []
    plain = evaluate(model, dataset(1, 8), k=20, batch_size=5, chunk=2)
    result = evaluate(model, dataset(1, 8), k=20, batch_size=5, chunk=2,
                      progress=lambda name, total: Recorder(name, total, bars))
    assert result["metrics"] == plain["metrics"]  # progress changes nothing
    assert [(b.name, b.total, b.finished, b.closed) for b in bars] == [("likelihood", 24, True, True),
                                                                       ("reconstruction", 24, True, True)]
    likelihood = bars[0].done
    # Passes of at most 5 x 2 samples: each sample of the 20 for a third of the 24 images (8 samples).
    assert likelihood == pytest.approx([8 / 20] * 60) and sum(likelihood) == pytest.approx(24)
    assert bars[1].done == []  # a set that does not report gets its bar filled when it returns


def test_a_failing_metric_set_closes_its_bar_without_finishing_it(extra_set):
    extra_set(MetricSet(name="extra", metrics={"extra_a": Metric("a", "", True)}, headline="extra_a",
                        applies=lambda model: True, run=lambda *a, **kw: 1 / 0))
    bars = []
    with pytest.raises(ZooError, match="metric set 'extra' failed"):
        evaluate(tiny(), dataset(1, 4, n=4), progress=lambda name, total: Recorder(name, total, bars))
    assert [(b.name, b.finished, b.closed) for b in bars] == [("extra", False, True)]


def test_evaluate_sets_threads_for_the_run_and_restores_them(extra_set):
    before = torch.get_num_threads()
    seen = []

    def run(model, images, **kw):
        seen.append(torch.get_num_threads())
        return {"extra_a": 1.0}

    extra_set(MetricSet(name="extra", metrics={"extra_a": Metric("a", "", True)}, headline="extra_a",
                        applies=lambda model: True, run=run))
    evaluate(tiny(), dataset(1, 4, n=2), threads=1)
    assert seen == [1] and torch.get_num_threads() == before
    with pytest.raises(ZooError, match="threads must be a whole number >= 1, got 0"):
        evaluate(tiny(), dataset(1, 4, n=2), threads=0)


# zoo eval: progress, automatic sizes, threads ------------------------------------------------------


@pytest.fixture
def saved_vae(tmp_path, monkeypatch):
    torch.manual_seed(0)
    zoo.create("dense-vae", image_size=8, hidden=[16], latent_dim=2).save_pretrained(tmp_path / "m")
    monkeypatch.setattr(zoo.data, "load", lambda name, split="train", download=False: dataset(1, 8, name=name))
    return str(tmp_path / "m")


def run_eval(*args):
    result = CliRunner().invoke(main, ["eval", *args, "--data", "fake", "--k", "8", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return result


def test_cli_eval_progress_goes_to_stderr_never_stdout(saved_vae):
    forced = run_eval(saved_vae, "--json", "--progress")
    record = json.loads(forced.stdout)  # stdout is the JSON record alone
    assert record["metric_sets"] == ["likelihood", "reconstruction"]
    assert "likelihood: 100%" in forced.stderr and "reconstruction: 100%" in forced.stderr
    assert "24/24 images" in forced.stderr and "images/s" in forced.stderr
    for args in ([], ["--no-progress"]):  # CliRunner's stderr is not a terminal: no bar unless forced
        assert "images" not in run_eval(saved_vae, "--json", *args).stderr
    table = run_eval(saved_vae, "--progress")
    assert "likelihood: 100%" in table.stderr and "likelihood" not in table.stdout.split("metric")[0]


def test_cli_eval_records_the_automatic_sizes_and_keeps_to_the_memory_budget(saved_vae, monkeypatch):
    from zoo import resources

    monkeypatch.setattr(resources, "available_memory", lambda device: 1 << 20)  # 1 MiB free: budget 256 KiB
    record = json.loads(run_eval(saved_vae, "--json").stdout)
    settings = record["settings"]
    assert settings["auto"] == ["batch_size", "chunk"] and settings["memory_budget_bytes"] == 1 << 18
    model = zoo.load(saved_vae)
    per_sample, per_image = resources.decoder_sample_bytes(model), resources.image_bytes(model)
    batch, chunk = settings["batch_size"], settings["chunk"]
    assert 1 <= batch < 500 and 1 <= chunk <= 8  # the budget, not the caps, decided
    assert batch * chunk * resources.SAFETY * per_sample <= 1 << 18  # a decoder pass fits
    assert batch * resources.SAFETY * per_image <= 1 << 18  # a batch of images fits
    assert (batch + 1) * resources.SAFETY * max(per_sample, per_image) > 1 << 18 or batch == 500  # as large as fits
    roomy = json.loads(run_eval(saved_vae, "--json").stdout)  # same budget: same sizes, same numbers
    assert roomy["settings"] == settings and roomy["metrics"] == record["metrics"]
    monkeypatch.setattr(resources, "available_memory", lambda device: 64 << 30)
    big = json.loads(run_eval(saved_vae, "--json").stdout)
    assert big["settings"]["batch_size"] == 500 and big["settings"]["chunk"] == 8  # capped by 500 and by k
    # The sizes change the speed, never the numbers (beyond float rounding).
    assert big["metrics"] == pytest.approx(record["metrics"], rel=1e-5)


def test_cli_eval_explicit_sizes_and_threads_win(saved_vae, monkeypatch):
    from zoo import resources

    monkeypatch.setattr(resources, "available_memory", lambda device: 1 << 10)  # would force batch 1, chunk 1
    record = json.loads(run_eval(saved_vae, "--json", "--batch-size", "7", "--chunk", "3", "--threads", "1").stdout)
    assert record["settings"] == {"batch_size": 7, "chunk": 3, "threads": 1, "auto": [], "memory_budget_bytes": None}
    half = json.loads(run_eval(saved_vae, "--json", "--batch-size", "7").stdout)["settings"]
    assert half["batch_size"] == 7 and half["chunk"] == 1 and half["auto"] == ["chunk"]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert json.loads(run_eval(saved_vae, "--json").stdout)["settings"]["threads"] == 1
    bad = CliRunner().invoke(main, ["eval", saved_vae, "--data", "fake", "--batch-size", "lots"])
    assert bad.exit_code == 2 and "'lots' is not a whole number or 'auto'" in bad.output
    bad = CliRunner().invoke(main, ["eval", saved_vae, "--data", "fake", "--chunk", "0"])
    assert bad.exit_code == 2 and "must be >= 1 or 'auto', got 0" in bad.output


def test_thread_defaults_honour_omp_num_threads_then_the_affinity_mask(monkeypatch):
    from zoo import resources

    monkeypatch.setattr(resources, "cpu_count", lambda: 6)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert resources.default_threads() == 6
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert resources.default_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2,1")  # a per-level list: the first level is torch's
    assert resources.default_threads() == 2
    for value, message in (("many", "is not a whole number"), ("0", "must be at least 1")):
        monkeypatch.setenv("OMP_NUM_THREADS", value)
        with pytest.raises(ZooError, match=f"OMP_NUM_THREADS='{value}' {message}"):
            resources.default_threads()
    before = torch.get_num_threads()
    try:
        assert resources.configure_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ZooError, match="threads must be a whole number >= 1"):
        resources.configure_threads(0)


def test_passive_openmp_wait_never_overrides_the_user_and_needs_torch_unloaded(monkeypatch):
    import subprocess
    import sys

    from zoo import resources

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert resources.passive_openmp_wait() is False and "OMP_WAIT_POLICY" not in os.environ  # torch is loaded
    monkeypatch.setenv("OMP_WAIT_POLICY", "active")
    assert resources.passive_openmp_wait() is False and os.environ["OMP_WAIT_POLICY"] == "active"
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    assert resources.passive_openmp_wait() is True
    # `zoo eval` loads its module without torch, so the policy is set before OpenMP starts.
    monkeypatch.delenv("OMP_WAIT_POLICY")
    code = ("import sys, os, zoo.cli.evaluate as e; from zoo import resources; "
            "print('torch' in sys.modules, resources.passive_openmp_wait(), os.environ['OMP_WAIT_POLICY'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True", "PASSIVE"]


def test_available_memory_reads_meminfo_and_the_cgroup_limit(tmp_path, monkeypatch):
    from zoo import resources

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24684084 kB\nMemFree:         1000 kB\nMemAvailable:   2000 kB\n")
    assert resources._meminfo_available(meminfo) == 2000 * 1024
    meminfo.write_text("MemTotal: 4000 kB\nMemFree: 100 kB\nBuffers: 10 kB\nCached: 20 kB\n")  # no MemAvailable
    assert resources._meminfo_available(meminfo) == 130 * 1024
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text("1000000\n")
    (v2 / "memory.current").write_text("400000\n")
    assert resources._cgroup_headroom(v2) == 600000
    (v2 / "memory.max").write_text("max\n")
    assert resources._cgroup_headroom(v2) is None
    v1 = tmp_path / "v1" / "memory"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text(str(2**63 - 4096))  # v1's "no limit"
    (v1 / "memory.usage_in_bytes").write_text("5")
    assert resources._cgroup_headroom(tmp_path / "v1") is None
    monkeypatch.setattr(resources, "_meminfo_available", lambda: 8 << 30)
    monkeypatch.setattr(resources, "_cgroup_headroom", lambda: 3 << 30)
    assert resources.available_memory("cpu") == 3 << 30 and resources.memory_budget("cpu") == (3 << 30) // 4
    with pytest.raises(ZooError, match="memory fraction must be in"):
        resources.memory_budget("cpu", fraction=0)
