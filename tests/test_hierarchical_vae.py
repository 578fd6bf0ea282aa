"""hierarchical-vae: its densities integrate to the exact log p(x), its bound samples its own q, and it passes
the conformance kit (dense and conv, standard and VampPrior top, ELBO and IWAE training)."""

import math

import pytest
import torch

import zoo
from zoo.errors import ConfigError
from zoo.testing import CHECKS

SMALL = {"hidden": 32, "latent_dim": 4, "top_dim": 3, "channels": [8, 16]}


IMAGES = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]], [[[1.0, 1.0], [1.0, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]]],
                      dtype=torch.float64)


def tiny(**overrides) -> zoo.Autoencoder:
    """One bottom and one top latent over a 2x2 image, small enough to integrate log p(x) on a grid, and trained
    briefly on IMAGES so that q is a fair proposal (a random one leaves the importance weights heavy-tailed)."""
    torch.manual_seed(0)
    model = zoo.create("hierarchical-vae", image_size=2, hidden=16, latent_dim=1, top_dim=1, **overrides).double()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        loss = model.loss(IMAGES.repeat(20, 1, 1, 1))["loss"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


def grid(half_width: float = 9.0, points: int = 1201) -> tuple[torch.Tensor, float]:
    """Codes [z1, z2] on a square grid, and the area of one cell."""
    axis = torch.linspace(-half_width, half_width, points, dtype=torch.float64)
    z1, z2 = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([z1.flatten(), z2.flatten()], -1), float(axis[1] - axis[0]) ** 2


def grid_log_marginal(model, x: torch.Tensor) -> torch.Tensor:
    """log p(x): the log of the sum of p(x | z1, z2) p(z1 | z2) p(z2) over the grid's cells."""
    z, cell = grid()
    with torch.no_grad():
        log_joint_z = model.log_prior(z)
        logits = model.decoder_logits(z)
        return torch.stack([torch.logsumexp(model.log_likelihood(logits, image.expand(len(z), *image.shape))
                                            + log_joint_z, 0) + math.log(cell) for image in x])


@pytest.mark.parametrize("prior", ["standard", "vamp"])
def test_the_importance_weighted_bound_converges_to_the_exact_log_likelihood(prior):
    model = tiny(prior=prior, pseudo_inputs=3)
    z, cell = grid()
    with torch.no_grad():
        assert abs(float(model.log_prior(z).exp().sum()) * cell - 1) < 1e-3  # p(z1 | z2) p(z2) is a density
    exact = grid_log_marginal(model, IMAGES)
    tight = model.importance_weighted_log_likelihood(IMAGES, 20000, generator=torch.Generator().manual_seed(0),
                                                     chunk=2000)
    assert (tight - exact).abs().max() < 0.03, (tight, exact)


def test_the_proposal_draws_from_the_hierarchy_and_scores_with_log_posterior():
    model = tiny()
    x = IMAGES[:2]
    draw = model.importance_proposal(x)
    eps = torch.randn(4000, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    z, log_q = draw(eps, slice(0, 2))
    assert torch.allclose(log_q, model.log_posterior(z, x))
    # z2 follows q(z2 | x); z1 | z2 follows q(z1 | x, z2): standardising by those gives N(0, 1) noise back
    z1, z2 = model.split(z)
    mu2, logvar2 = model.top_posterior(x)
    mu1, logvar1 = model.bottom_posterior(x, z2)
    assert torch.allclose((z2 - mu2) / torch.exp(0.5 * logvar2), eps[..., 1:])
    assert torch.allclose((z1 - mu1) / torch.exp(0.5 * logvar1), eps[..., :1])


def test_prior_moments_match_ancestral_samples():
    model = tiny()
    torch.manual_seed(2)
    with torch.no_grad():
        z2 = torch.randn(200_000, 1, dtype=torch.float64)
        mu1, logvar1 = model.bottom_prior(z2)
        z1 = mu1 + torch.exp(0.5 * logvar1) * torch.randn_like(mu1)
    mean, std = model.prior_moments()
    assert torch.allclose(mean, torch.tensor([z1.mean(), 0.0], dtype=mean.dtype), atol=0.03)
    assert torch.allclose(std, torch.tensor([z1.std(), 1.0], dtype=std.dtype), rtol=0.03)
    assert torch.equal(mean, model.prior_moments()[0])  # fixed draws: the same on every call


def test_the_elbo_kl_is_analytic_given_z2_and_bounds_the_likelihood():
    """With iwae_samples = 1 the loss is the negative ELBO; averaged over many draws it is above -log p(x)."""
    model = tiny()
    x = IMAGES[:1].expand(20000, 1, 2, 2)
    torch.manual_seed(3)
    with torch.no_grad():
        terms = model.loss(x)
    exact = grid_log_marginal(model, x[:1])
    assert float(terms["neg_elbo"]) > -float(exact[0])
    assert torch.allclose(terms["neg_elbo"], terms["reconstruction"] + terms["kl"])
    assert float(terms["kl"]) > 0


@pytest.mark.parametrize("config", [
    {"network": "dense"},
    {"network": "conv"},
    {"network": "conv", "prior": "vamp", "pseudo_inputs": 5, "iwae_samples": 2},
])
def test_passes_the_conformance_kit(zoo_conformance, config):
    report = zoo_conformance("hierarchical-vae", config={**SMALL, **config})
    assert report.passed == [c for c in CHECKS if c != "package"] and not report.skipped


def test_the_code_is_both_latents_and_sampling_is_seeded():
    model = zoo.create("hierarchical-vae", **SMALL).eval()
    x = (torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(4)) > 0.5).float()
    assert model.latent_dim == 7 and model.encode(x).shape == (3, 7)
    assert model.decode(model.encode(x)).shape == (3, 1, 28, 28)
    a = model.sample(4, generator=torch.Generator().manual_seed(5))
    b = model.sample(4, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a[0], a[1])


def test_a_conv_config_needs_an_image_side_its_stages_can_halve():
    with pytest.raises(ConfigError, match="image_size"):
        zoo.create("hierarchical-vae", network="conv", image_size=30, channels=[8, 16])
