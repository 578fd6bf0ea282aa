"""The shared components: reparameterization, KL, likelihoods, ELBO, blocks, corruption, colour."""

import math

import pytest
import torch

from zoo.components import (
    MLP,
    ConvDecoder,
    ConvEncoder,
    GaussianReparameterization,
    KLWarmup,
    bernoulli_log_likelihood,
    elbo,
    gaussian_log_likelihood,
    kl_standard_normal,
)
from zoo.components.color import gray_lightness, lab_to_rgb, rgb_to_gray, rgb_to_lab
from zoo.components.corruption import corrupt


def test_reparameterization_returns_mean_in_eval_and_samples_in_training():
    reparam = GaussianReparameterization()
    mu, logvar = torch.randn(4, 3), torch.randn(4, 3)
    reparam.eval()
    assert torch.equal(reparam(mu, logvar), mu)
    assert not torch.equal(reparam(mu, logvar, sample=True), mu)
    reparam.train()
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    z = reparam(mu, logvar, generator=g1)
    eps = torch.randn(mu.shape, generator=g2)
    torch.testing.assert_close(z, mu + torch.exp(0.5 * logvar) * eps)


def test_reparameterization_matches_target_moments():
    reparam = GaussianReparameterization().train()
    mu = torch.full((200_000, 1), 2.0)
    logvar = torch.full((200_000, 1), math.log(0.25))
    z = reparam(mu, logvar, generator=torch.Generator().manual_seed(1))
    assert abs(z.mean().item() - 2.0) < 0.01
    assert abs(z.std().item() - 0.5) < 0.01


def test_kl_matches_closed_form_and_is_zero_at_prior():
    mu, logvar = torch.zeros(2, 5), torch.zeros(2, 5)
    assert torch.equal(kl_standard_normal(mu, logvar), torch.zeros(2))
    mu = torch.tensor([[1.0, -2.0]])
    logvar = torch.tensor([[math.log(4.0), 0.0]])
    expected = 0.5 * ((1 + 4 - 1 - math.log(4.0)) + (4 + 1 - 1 - 0))
    assert kl_standard_normal(mu, logvar).item() == pytest.approx(expected)


def test_bernoulli_log_likelihood_is_stable_for_extreme_logits():
    logits = torch.tensor([[1000.0, -1000.0, 0.0]])
    target = torch.tensor([[1.0, 0.0, 1.0]])
    value = bernoulli_log_likelihood(logits, target)
    assert torch.isfinite(value).all()
    assert value.item() == pytest.approx(math.log(0.5))
    wrong = bernoulli_log_likelihood(logits, 1 - target)
    assert torch.isfinite(wrong).all() and wrong.item() < -1999


def test_gaussian_log_likelihood_matches_normal_density():
    mean, target = torch.zeros(1, 2), torch.tensor([[0.5, -1.0]])
    expected = torch.distributions.Normal(0.0, 0.5).log_prob(target).sum()
    assert gaussian_log_likelihood(mean, target, sigma=0.5).item() == pytest.approx(expected.item())


def test_elbo_weights_kl_and_warmup_ramps():
    warmup = KLWarmup(beta=2.0, steps=10)
    assert [warmup(0), warmup(5), warmup(10), warmup(50), warmup(None)] == [0.0, 1.0, 2.0, 2.0, 2.0]
    terms = elbo(torch.tensor([-10.0, -20.0]), torch.tensor([1.0, 3.0]), kl_weight=0.5)
    assert terms.reconstruction.item() == 15.0 and terms.kl.item() == 2.0
    assert terms.loss.item() == 16.0
    assert terms.as_dict()["neg_elbo"].item() == 17.0


@pytest.mark.parametrize("channels,size", [((16, 32), 28), ((8, 16, 32), 32)])
def test_conv_encoder_decoder_shapes(channels, size):
    enc = ConvEncoder(3, channels, size, 10, hidden=32)
    dec = ConvDecoder(10, channels, 3, size, hidden=32)
    z = enc(torch.rand(2, 3, size, size))
    assert z.shape == (2, 10)
    assert dec(z).shape == (2, 3, size, size)


def test_mlp_layers_and_dropout():
    mlp = MLP(6, [5, 4], 3, "elu", dropout=0.5)
    assert [m.out_features for m in mlp if isinstance(m, torch.nn.Linear)] == [5, 4, 3]
    assert sum(isinstance(m, torch.nn.Dropout) for m in mlp) == 2


def test_corruptions():
    x = torch.full((64, 1, 16, 16), 0.5)
    g = torch.Generator().manual_seed(0)
    noisy = corrupt(x, "gaussian", 0.5, clip=True, generator=g)
    assert noisy.min() >= 0 and noisy.max() <= 1 and (noisy - x).std() > 0.3
    sp = corrupt(x, "salt-and-pepper", 0.2, generator=g)
    hit = sp != 0.5
    assert set(sp[hit].unique().tolist()) == {0.0, 1.0}
    assert 0.17 < hit.float().mean().item() < 0.23
    masked = corrupt(x, "mask", 0.3, generator=g)
    assert 0.27 < (masked == 0).float().mean().item() < 0.33
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(x, "blur", 0.1)


def test_lab_round_trip_and_grey_reproduction():
    rgb = torch.rand(3, 3, 8, 8)
    torch.testing.assert_close(lab_to_rgb(rgb_to_lab(rgb)), rgb, atol=1e-4, rtol=0)
    white = rgb_to_lab(torch.ones(1, 3, 1, 1)).flatten()
    torch.testing.assert_close(white, torch.tensor([100.0, 0.0, 0.0]), atol=1e-2, rtol=0)
    gray = rgb_to_gray(rgb)
    neutral = torch.cat([gray_lightness(gray), torch.zeros(3, 2, 8, 8)], dim=1)
    torch.testing.assert_close(lab_to_rgb(neutral), gray.expand(-1, 3, -1, -1), atol=1e-4, rtol=0)
