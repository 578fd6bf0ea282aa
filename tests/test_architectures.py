"""Every built-in architecture: shapes, a loss that trains, gradients, checkpoints, config validation."""

import pytest
import torch

import zoo
from zoo.errors import ConfigError, UnsupportedTaskError
from zoo.tasks import TASKS

# (architecture, config overrides): small but real configurations of each built-in.
CASES = {
    "dense-vae": ("dense-vae", {"hidden": [64], "latent_dim": 8}),
    "dense-vae-deep": ("dense-vae", {"hidden": [64, 32], "latent_dim": 4, "activation": "elu", "dropout": 0.1}),
    "conv-vae-mnist": ("conv-vae", {"channels": [8, 16], "hidden": 32, "latent_dim": 8}),
    "conv-vae-rgb32": ("conv-vae", {"image_channels": 3, "image_size": 32, "channels": [8, 16, 16], "hidden": 32,
                                    "latent_dim": 8, "likelihood": "gaussian"}),
    "denoising-ae": ("denoising-ae", {"channels": [8, 16], "hidden": 32, "latent_dim": 16}),
    "denoising-ae-sp": ("denoising-ae", {"channels": [8, 16], "hidden": 0, "noise": "salt-and-pepper", "noise_level": 0.2}),
    "colorization-ae": ("colorization-ae", {"channels": [8, 16]}),
}


def build(case: str) -> zoo.Autoencoder:
    architecture, config = CASES[case]
    torch.manual_seed(0)
    return zoo.create(architecture, **config)


def batch_for(model: zoo.Autoencoder, n: int = 16) -> torch.Tensor:
    """Blocky images (binary for one channel, colour otherwise): learnable, unlike white noise."""
    channels, height, width = model.data_shape
    coarse = torch.rand((n, channels, 4, 4), generator=torch.Generator().manual_seed(1))
    images = torch.nn.functional.interpolate(coarse, size=(height, width), mode="nearest")
    return (images > 0.5).float() if channels == 1 else images


@pytest.mark.parametrize("case", CASES)
def test_task_output_shapes(case):
    model = build(case).eval()
    images = torch.rand(3, *model.input_shape)
    for task in model.tasks:
        spec = TASKS[task]
        inputs = {"image": images, "latent": torch.randn(3, model.latent_dim or 1), "count": 3}[spec.input]
        out = model.run_task(task, inputs)
        expected = {
            "image": (3, *(model.data_shape if spec.name == "colorize" else model.input_shape)),
            "vector": (3, model.latent_dim),
            "scalar": (3,),
        }[spec.output]
        assert tuple(out.shape) == expected, task
        assert torch.isfinite(out).all()
        if spec.output == "image":
            assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("case", CASES)
def test_loss_is_finite_and_drops_on_a_fixed_batch(case):
    model = build(case).train()
    batch = batch_for(model)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    torch.manual_seed(2)
    losses = []
    for step in range(40):
        terms = model.loss(batch, step=step)
        assert "loss" in terms and torch.isfinite(terms["loss"])
        optimiser.zero_grad()
        terms["loss"].backward()
        optimiser.step()
        losses.append(terms["loss"].item())
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 * 0.98, losses


@pytest.mark.parametrize("case", CASES)
def test_gradients_reach_every_parameter(case):
    model = build(case).train()
    torch.manual_seed(3)
    model.loss(batch_for(model))["loss"].backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize("case", CASES)
def test_save_load_round_trip_is_bit_identical(case, tmp_path):
    model = build(case).eval()
    model.save_pretrained(tmp_path)
    loaded = zoo.load(tmp_path)
    assert not loaded.training
    assert type(loaded) is type(model) and loaded.config == model.config
    images = torch.rand(4, *model.input_shape)
    for task in model.tasks:
        spec = TASKS[task]
        inputs = {"image": images, "latent": torch.randn(4, model.latent_dim or 1), "count": 4}[spec.input]
        a = model.run_task(task, inputs, generator=torch.Generator().manual_seed(5))
        b = loaded.run_task(task, inputs, generator=torch.Generator().manual_seed(5))
        assert torch.equal(a, b), task


@pytest.mark.parametrize(
    "architecture,field,value",
    [
        ("dense-vae", "latent_dim", 0),
        ("dense-vae", "hidden", [64, -1]),
        ("dense-vae", "activation", "sigmoidish"),
        ("dense-vae", "dropout", 1.0),
        ("dense-vae", "likelihood", "poisson"),
        ("dense-vae", "latent_dim", "20"),
        ("conv-vae", "image_size", 30),
        ("conv-vae", "channels", []),
        ("conv-vae", "beta", -1.0),
        ("denoising-ae", "noise", "speckle"),
        ("denoising-ae", "noise_level", -0.1),
        ("colorization-ae", "image_channels", 1),
        ("colorization-ae", "image_size", 36),
    ],
)
def test_config_validation_names_the_field(architecture, field, value):
    with pytest.raises(ConfigError) as excinfo:
        zoo.create(architecture, **{field: value})
    assert excinfo.value.field == field
    assert repr(field) in str(excinfo.value)


def test_unknown_config_field_is_named():
    with pytest.raises(ConfigError, match="'latent_size'.*valid fields"):
        zoo.create("dense-vae", latent_size=3)


def test_presets_build_the_seed_models():
    small = zoo.create("dense-vae", preset="784-400-20")
    assert [m.out_features for m in small.encoder if isinstance(m, torch.nn.Linear)] == [400, 40]
    deep = zoo.create("dense-vae", preset="784-500-500-50")
    assert deep.config.activation == "elu" and deep.config.dropout > 0
    assert [m.out_features for m in deep.encoder if isinstance(m, torch.nn.Linear)] == [500, 500, 100]


def test_undeclared_task_is_refused_with_the_supported_list():
    model = build("colorization-ae")
    with pytest.raises(UnsupportedTaskError, match="supports: colorize"):
        model.run_task("sample", 2)
    with pytest.raises(UnsupportedTaskError, match="no sample"):
        model.sample(2)


def test_vae_sampling_is_reproducible_with_a_generator():
    model = build("conv-vae-mnist").eval()
    a = model.sample(4, generator=torch.Generator().manual_seed(0))
    b = model.sample(4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (4, 1, 28, 28)


def test_iwae_bound_is_at_least_the_elbo():
    model = build("dense-vae").eval()
    x = (torch.rand(8, 1, 28, 28) > 0.5).float()
    g = torch.Generator().manual_seed(0)
    iwae = model.importance_weighted_log_likelihood(x, k=64, generator=g, chunk=16)
    single = model.importance_weighted_log_likelihood(x, k=1, generator=g)
    assert iwae.shape == (8,)
    assert iwae.mean() > single.mean()


def test_denoising_loss_applies_the_configured_corruption():
    model = build("denoising-ae").eval()
    clean = torch.zeros(2, 1, 28, 28)
    noisy = model.corrupt(clean, generator=torch.Generator().manual_seed(0))
    assert noisy.min() >= 0 and noisy.max() <= 1 and noisy.mean() > 0.1
