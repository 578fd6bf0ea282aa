"""The shared components: reparameterization, KL, likelihoods, ELBO, blocks, corruption, augmentation, colour."""

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
    class_rebalancing_weights,
    elbo,
    gaussian_log_likelihood,
    kl_standard_normal,
    random_affine,
    random_flip,
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


def test_random_affine_shifts_each_image_by_its_own_whole_pixel_amount_within_the_limit():
    x = torch.zeros(400, 1, 28, 28)
    x[:, :, 14, 14] = 1.0
    moved = random_affine(x, max_shift=0.1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(moved.flatten(1).sum(1), torch.ones(400))  # nearest sampling: one pixel, still binary
    where = moved.flatten(1).argmax(1)
    dy, dx = where // 28 - 14, where % 28 - 14
    assert dy.abs().max() <= 3 and dx.abs().max() <= 3  # 10% of 28 pixels, rounded
    assert len(set(zip(dy.tolist(), dx.tolist()))) >= 40  # every image draws its own move
    assert abs(dy.float().mean()) < 0.3 and abs(dx.float().mean()) < 0.3  # symmetric
    again = random_affine(x, max_shift=0.1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, moved)
    assert random_affine(x, 0.0, 0.0) is x


def test_random_affine_rotates_about_the_centre_within_the_limit():
    bar = torch.zeros(300, 1, 28, 28)
    bar[:, :, 13:15, 4:24] = 1.0  # a horizontal bar through the centre
    turned = random_affine(bar, max_rotation=15.0, generator=torch.Generator().manual_seed(1))
    assert set(turned.unique().tolist()) <= {0.0, 1.0}
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    w = turned[:, 0]
    mass = w.sum((1, 2))
    cy, cx = (w * ys).sum((1, 2)) / mass, (w * xs).sum((1, 2)) / mass
    assert (cy - 13.5).abs().max() < 0.6 and (cx - 13.5).abs().max() < 0.6
    cov_xy = (w * (xs - cx[:, None, None]) * (ys - cy[:, None, None])).sum((1, 2))
    cov_xx = (w * (xs - cx[:, None, None]) ** 2).sum((1, 2))
    cov_yy = (w * (ys - cy[:, None, None]) ** 2).sum((1, 2))
    angle = torch.rad2deg(0.5 * torch.atan2(2 * cov_xy, cov_xx - cov_yy))
    assert angle.abs().max() < 17 and angle.std() > 6  # uniform in [-15, 15] has std 8.7
    wide = torch.zeros(300, 1, 28, 56)
    wide[:, :, 14, 43] = 1.0  # one pixel 15 to the right of the centre (13.5, 27.5) of a 28 x 56 image
    turned = random_affine(wide, max_rotation=40.0, generator=torch.Generator().manual_seed(2)).flatten(1)
    kept = turned.sum(1) > 0  # nearest sampling of a turned grid can miss a lone pixel, or hit it twice
    assert kept.sum() > 250
    where = turned[kept].argmax(1)
    radius = ((where // 56 - 13.5) ** 2 + (where % 56 - 27.5) ** 2).sqrt()
    assert (radius - 15.5).abs().max() < 1.0  # turned in pixels: the distance to the centre is kept


def test_random_affine_rejects_what_it_cannot_do():
    with pytest.raises(ValueError, match="batch"):
        random_affine(torch.zeros(1, 28, 28), 0.1)
    with pytest.raises(ValueError, match="max_shift"):
        random_affine(torch.zeros(1, 1, 28, 28), 1.0)
    with pytest.raises(ValueError, match="max_rotation"):
        random_affine(torch.zeros(1, 1, 28, 28), 0.0, -5.0)


def test_lab_round_trip_and_grey_reproduction():
    rgb = torch.rand(3, 3, 8, 8)
    torch.testing.assert_close(lab_to_rgb(rgb_to_lab(rgb)), rgb, atol=1e-4, rtol=0)
    white = rgb_to_lab(torch.ones(1, 3, 1, 1)).flatten()
    torch.testing.assert_close(white, torch.tensor([100.0, 0.0, 0.0]), atol=1e-2, rtol=0)
    gray = rgb_to_gray(rgb)
    neutral = torch.cat([gray_lightness(gray), torch.zeros(3, 2, 8, 8)], dim=1)
    torch.testing.assert_close(lab_to_rgb(neutral), gray.expand(-1, 3, -1, -1), atol=1e-4, rtol=0)


def test_importance_weighted_bound_is_the_log_mean_weight_and_tightens_with_k():
    from zoo.components import importance_weighted_bound

    log_w = torch.tensor([[-3.0, 0.0], [-1.0, 0.0]])
    expected = torch.log(torch.tensor([(math.exp(-3) + math.exp(-1)) / 2, 1.0]))
    assert torch.allclose(importance_weighted_bound(log_w), expected)
    assert torch.equal(importance_weighted_bound(log_w[:1]), log_w[0])  # k = 1: the one-sample ELBO
    # for weights with mean 1 (log p(x) = 0) the bound rises towards 0 as k grows
    torch.manual_seed(0)
    draws = torch.randn(1024, 4096) - 0.5  # log-normal weights: E[w] = exp(-0.5 + 0.5) = 1
    bounds = [float(importance_weighted_bound(draws[:k]).mean()) for k in (1, 16, 1024)]
    assert bounds[0] == pytest.approx(-0.5, abs=0.05) and bounds[0] < bounds[1] < bounds[2] < 0.01
    with pytest.raises(ValueError, match=r"shaped \(k, N\)"):
        importance_weighted_bound(torch.zeros(3))


def test_a_vae_trains_the_iwae_bound_with_iwae_samples():
    """loss() with iwae_samples=k is -mean(IWAE bound) over the same k draws; tighter than the ELBO."""
    import zoo
    from zoo.components.reparameterize import log_normal_diagonal

    torch.manual_seed(0)
    model = zoo.create("dense-vae", image_size=8, hidden=[16], latent_dim=3, iwae_samples=7).train()
    x = torch.bernoulli(torch.rand(5, 1, 8, 8))
    torch.manual_seed(1)
    terms = model.loss(x)
    torch.manual_seed(1)
    mu, logvar = model.posterior(x)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(7, *mu.shape)
    log_w = torch.stack([model.log_likelihood(model.decoder_logits(z[j]), x) for j in range(7)])
    log_w = log_w - 0.5 * (z ** 2 + math.log(2 * math.pi)).sum(-1) - log_normal_diagonal(z, mu, logvar)
    want = -(torch.logsumexp(log_w, 0) - math.log(7)).mean()
    assert torch.allclose(terms["loss"], want, atol=1e-4)
    assert terms["neg_iwae"] == terms["loss"].detach() and not terms["neg_iwae"].requires_grad
    assert terms["loss"].requires_grad
    terms["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())
    # averaged over draws, the IWAE loss sits below the negative ELBO
    model.zero_grad()
    losses = torch.stack([model.loss(x)["loss"].detach() for _ in range(40)])
    elbos = torch.stack([model.loss(x)["neg_elbo"].detach() for _ in range(40)])
    assert losses.mean() < elbos.mean()
    with pytest.raises(zoo.errors.ConfigError, match="iwae_samples"):
        zoo.create("dense-vae", iwae_samples=0)
    with pytest.raises(zoo.errors.ConfigError, match="iwae_samples.*VaDE"):
        zoo.create("mixture-vae", iwae_samples=4)


def test_log_normal_components_match_the_broadcast_density_even_for_narrow_posteriors():
    from zoo.components import log_normal_components
    from zoo.components.reparameterize import log_normal_diagonal

    torch.manual_seed(0)
    mu, logvar = torch.randn(6, 4) * 3, torch.rand(6, 4) * -12  # variances down to 6e-6
    z = torch.randn(2, 5, 4) * 3
    want = log_normal_diagonal(z.double().unsqueeze(-2), mu.double(), logvar.double())  # (2, 5, 6)
    got = log_normal_components(z, mu, logvar)
    assert got.shape == (2, 5, 6) and got.dtype == torch.float32
    assert torch.allclose(got.double(), want, rtol=1e-6, atol=1e-3)


def test_vamp_prior_is_the_mean_of_the_posteriors_at_its_pseudo_inputs():
    import zoo
    from zoo.components import VampPrior
    from zoo.components.reparameterize import log_normal_diagonal

    torch.manual_seed(0)
    model = zoo.create("dense-vae", image_size=8, hidden=[16], latent_dim=3, prior="vamp", pseudo_inputs=4)
    prior = model.vamp_prior
    assert isinstance(prior, VampPrior) and prior.components == 4
    assert prior.pseudo_inputs().shape == (4, 1, 8, 8)
    with torch.no_grad():
        prior.inputs.uniform_(-0.5, 1.5)  # clamped to [0, 1] where used
    u = prior.pseudo_inputs().detach()
    assert float(u.min()) == 0.0 and float(u.max()) == 1.0
    z = torch.randn(7, 3)
    mu, logvar = model.posterior(u)
    want = torch.logsumexp(torch.stack([log_normal_diagonal(z, mu[k], logvar[k]) for k in range(4)]), 0) - math.log(4)
    assert torch.allclose(model.log_prior(z), want, atol=1e-4)
    # the IWAE bound uses this prior: at k = 1 with the posterior mean's sample it is log p(x|z) + log p(z) - log q
    x = torch.bernoulli(torch.rand(3, 1, 8, 8))
    gen = torch.Generator().manual_seed(5)
    got = model.importance_weighted_log_likelihood(x, 1, generator=gen)
    mu_x, logvar_x = model.posterior(x)
    zx = mu_x + torch.exp(0.5 * logvar_x) * torch.randn((1, *mu_x.shape), generator=torch.Generator().manual_seed(5))[0]
    with torch.no_grad():
        manual = (model.log_likelihood(model.decoder_logits(zx), x) + model.log_prior(zx)
                  - log_normal_diagonal(zx, mu_x, logvar_x))
    assert torch.allclose(got, manual, atol=1e-3)


def test_prior_moments_match_the_priors_own_samples():
    """Mean and std per coordinate, as ``zoo compress`` scales by: N(0, I) says None, the mixtures say theirs."""
    import zoo

    torch.manual_seed(0)
    assert zoo.create("dense-vae", image_size=8, hidden=[16], latent_dim=3).prior_moments() is None
    vamp = zoo.create("dense-vae", image_size=8, hidden=[16], latent_dim=3, prior="vamp", pseudo_inputs=6).eval()
    with torch.no_grad():
        vamp.vamp_prior.inputs.uniform_(0, 1)
        vamp.encoder[-1].bias[:3] = torch.tensor([4.0, -2.0, 0.5])
    mixture = zoo.create("mixture-vae", image_size=8, hidden=[16], latent_dim=3, components=4).eval()
    with torch.no_grad():
        mixture.prior.set_mixture_(torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.randn(4, 3) * 3,
                                   torch.rand(4, 3) + 0.1)
    gen = torch.Generator().manual_seed(1)
    for model, draw in ((vamp, lambda n: vamp.vamp_prior.sample(n, vamp.posterior, gen)),
                        (mixture, lambda n: mixture.prior.sample(n, gen)[0])):
        with torch.no_grad():
            mean, std = model.prior_moments()
            z = draw(200_000)
        assert mean.shape == std.shape == (3,)
        assert torch.allclose(mean, z.mean(0), atol=0.03) and torch.allclose(std, z.std(0), rtol=0.02)


def test_vamp_prior_kl_is_exact_for_one_pseudo_input_and_samples_follow_its_posterior():
    """With K = 1 the prior is one Gaussian, log p is quadratic, and the sigma-point KL is the closed form."""
    import zoo

    torch.manual_seed(0)
    model = zoo.create("dense-vae", image_size=8, hidden=[16], latent_dim=3, prior="vamp", pseudo_inputs=1).eval()
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        mu, logvar = model.posterior(x)
        mu_p, logvar_p = model.posterior(model.vamp_prior.pseudo_inputs())
        closed = 0.5 * (logvar_p - logvar + (logvar.exp() + (mu - mu_p).pow(2)) / logvar_p.exp() - 1).sum(-1)
        assert torch.allclose(model.kl_divergence(mu, logvar), closed, atol=1e-4)
        assert torch.equal(model.kl_divergence(mu, logvar)[:2], model.kl_divergence(mu[:2], logvar[:2]))
        z = model.vamp_prior.sample(20000, model.posterior, torch.Generator().manual_seed(0))
    assert torch.allclose(z.mean(0), mu_p[0], atol=0.05)
    assert torch.allclose(z.var(0).log(), logvar_p[0], atol=0.05)
    with pytest.raises(zoo.errors.ConfigError, match="prior"):
        zoo.create("dense-vae", prior="gaussian-mixture")


# --- class rebalancing --------------------------------------------------------------------------------


def test_rebalancing_weights_go_from_uniform_to_inverse_frequency_and_keep_the_mean():
    counts = torch.tensor([90.0, 9.0, 1.0, 0.0])
    p = counts / counts.sum()

    assert torch.equal(class_rebalancing_weights(counts, 0.0), torch.ones(4))
    nearly_pure = class_rebalancing_weights(counts[:3], 0.99999)
    assert torch.allclose(nearly_pure * p[:3], torch.full((3,), 1 / 3), rtol=1e-3)  # each class counts the same
    half = class_rebalancing_weights(counts, 0.5)
    assert torch.allclose((p * half).sum(), torch.tensor(1.0))  # the loss keeps its scale under p
    assert half[0] < 1 < half[1] < half[2] < half[3]  # the rarer, the heavier
    assert half[3] / half[0] == pytest.approx((0.5 * 0.9 + 0.5 / 4) / (0.5 / 4), rel=1e-5)
    assert torch.equal(class_rebalancing_weights(torch.zeros(5), 0.7), torch.ones(5))  # nothing counted yet


def test_rebalancing_weights_reject_bad_arguments():
    for strength in (-0.1, 1.0):  # 1 would weigh a class never seen infinitely
        with pytest.raises(ValueError, match="strength"):
            class_rebalancing_weights(torch.ones(3), strength)
    with pytest.raises(ValueError, match="negative"):
        class_rebalancing_weights(torch.tensor([1.0, -1.0]), 0.5)
    with pytest.raises(ValueError, match="vector"):
        class_rebalancing_weights(torch.ones(2, 2), 0.5)



def test_random_flip_mirrors_about_half_of_the_images_each_by_its_own_draw():
    x = torch.rand(400, 2, 3, 5)
    flipped = random_flip(x, generator=torch.Generator().manual_seed(0))
    mirrored = (flipped == x.flip(-1)).flatten(1).all(1)
    kept = (flipped == x).flatten(1).all(1)

    assert bool((mirrored ^ kept).all())  # every image is either itself or its exact mirror
    assert 150 < int(mirrored.sum()) < 250
    assert torch.equal(flipped, random_flip(x, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="N, C, H, W"):
        random_flip(torch.rand(3, 5))
