"""mixture-vae: the Gaussian-mixture prior, its VaDE ELBO terms, the clustering routines and scores,
the cluster task, the pretraining switch (and exact resume across it) and the pretrained model."""

import itertools
import math
import json
import os
import signal
from pathlib import Path

import pytest
import torch
from torch import distributions as D

import zoo
from zoo.components import GaussianMixturePrior, fit_gaussian_mixture, kl_standard_normal, kmeans
from zoo.errors import ConfigError
from zoo.testing import check_architecture
from zoo.vae import VariationalAutoencoder
from zoo_plugins import mixture_vae
from zoo_plugins.mixture_vae import (
    MixtureVAE,
    clustering_accuracy,
    contingency,
    hungarian,
    linear_assignment,
    normalized_mutual_information,
)

SMALL = {"hidden": [32], "latent_dim": 3, "components": 4}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_prior(k=5, d=3, seed=0) -> GaussianMixturePrior:
    torch.manual_seed(seed)
    prior = GaussianMixturePrior(k, d).double()
    with torch.no_grad():
        prior.logits.normal_()
        prior.means.mul_(2)
        prior.logvars.uniform_(-1.5, 1.0)
    return prior


def reference(prior: GaussianMixturePrior) -> D.MixtureSameFamily:
    components = D.Independent(D.Normal(prior.means, torch.exp(0.5 * prior.logvars)), 1)
    return D.MixtureSameFamily(D.Categorical(logits=prior.logits), components)


# -- the prior -----------------------------------------------------------------------------------


def test_log_prob_equals_torch_distributions_mixture():
    prior = random_prior()
    z = torch.randn(200, 3, dtype=torch.float64) * 3
    with torch.no_grad():
        assert torch.allclose(prior.log_prob(z), reference(prior).log_prob(z), atol=1e-10)
        batched = z.view(10, 20, 3)  # any leading shape
        assert torch.allclose(prior.log_prob(batched), reference(prior).log_prob(batched), atol=1e-10)


def test_responsibilities_are_bayes_rule_and_sum_to_one():
    prior = random_prior()
    z = torch.randn(100, 3, dtype=torch.float64) * 3
    ref = reference(prior)
    with torch.no_grad():
        joint = ref.mixture_distribution.logits + ref.component_distribution.log_prob(z.unsqueeze(1))
        expected = torch.softmax(joint, dim=1)
        gamma = prior.responsibilities(z)
        assert torch.allclose(gamma, expected, atol=1e-12)
        assert torch.allclose(gamma.sum(1), torch.ones(100, dtype=torch.float64))
        assert torch.allclose(prior.log_responsibilities(z).exp(), gamma)
        q = prior.posterior_responsibilities(z, torch.randn_like(z))
        assert torch.allclose(q.sum(1), torch.ones(100, dtype=torch.float64))


def test_densities_stay_finite_far_from_every_component():
    prior = random_prior().float()
    z = torch.full((4, 3), 1e4)
    with torch.no_grad():
        assert torch.isfinite(prior.log_prob(z)).all()
        assert torch.isfinite(prior.responsibilities(z)).all() and torch.allclose(prior.responsibilities(z).sum(1),
                                                                                  torch.ones(4))
        assert torch.isfinite(prior.kl(z, torch.zeros(4, 3))).all()


def test_expected_component_log_prob_matches_monte_carlo():
    prior = random_prior()
    mu, logvar = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64) * 0.5
    gen = torch.Generator().manual_seed(1)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(200_000, 4, 3, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        mc = prior.component_log_prob(z)  # (S, 4, K)
        analytic = prior.expected_component_log_prob(mu, logvar)
    stderr = mc.std(0) / math.sqrt(len(z))
    assert ((mc.mean(0) - analytic).abs() < 5 * stderr + 1e-9).all()


@pytest.mark.parametrize("given", [True, False], ids=["vade-gamma", "optimal-gamma"])
def test_kl_matches_a_monte_carlo_estimate(given):
    """KL(q(z|x) q(c|x) || p(z, c)) = E_q[log q(z|x) + log q(c|x) - log p(c) - log p(z|c)], estimated by sampling."""
    prior = random_prior()
    mu, logvar = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64) * 0.5
    with torch.no_grad():
        if given:
            log_gamma = torch.log_softmax(torch.randn(4, 5, dtype=torch.float64), dim=1)
        else:
            log_gamma = prior.posterior_responsibilities(mu, logvar).log()
        analytic = prior.kl(mu, logvar, log_gamma if given else None)
        gen = torch.Generator().manual_seed(2)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(200_000, 4, 3, generator=gen, dtype=torch.float64)
        log_q_z = D.Independent(D.Normal(mu, torch.exp(0.5 * logvar)), 1).log_prob(z)  # (S, 4)
        log_p_zc = prior.joint_log_prob(z)  # (S, 4, K)
        samples = log_q_z + (log_gamma.exp() * (log_gamma - log_p_zc)).sum(-1)
    stderr = samples.std(0) / math.sqrt(len(z))
    assert ((samples.mean(0) - analytic).abs() < 5 * stderr).all(), (samples.mean(0), analytic)
    # and it bounds the marginal KL(q(z|x) || p(z)) from above
    marginal = (log_q_z - prior.log_prob(z)).mean(0)
    assert (analytic >= marginal - 5 * stderr).all()


def test_the_optimal_responsibilities_minimise_the_kl():
    prior = random_prior()
    mu, logvar = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64) * 0.5
    with torch.no_grad():
        best = prior.kl(mu, logvar)
        for seed in range(5):
            other = torch.log_softmax(torch.randn(8, 5, generator=torch.Generator().manual_seed(seed),
                                                  dtype=torch.float64), dim=1)
            assert (prior.kl(mu, logvar, other) >= best - 1e-12).all()
        assert torch.allclose(prior.kl(mu, logvar, prior.posterior_responsibilities(mu, logvar).log()), best)


def test_a_one_component_standard_normal_prior_is_the_standard_vae_prior():
    prior = GaussianMixturePrior(1, 3).double()
    with torch.no_grad():
        prior.means.zero_()
    mu, logvar = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(prior.kl(mu, logvar), kl_standard_normal(mu, logvar))
        assert torch.allclose(prior.log_prob(mu), D.Normal(0.0, 1.0).log_prob(mu).sum(-1).double())


def test_sample_draws_components_by_weight_and_is_seeded():
    prior = random_prior(k=3, d=2).float()
    with torch.no_grad():
        prior.logits.copy_(torch.log(torch.tensor([0.6, 0.3, 0.1])))
        prior.logvars.fill_(math.log(1e-4))
        z, c = prior.sample(20_000, generator=torch.Generator().manual_seed(0))
        again, _ = prior.sample(20_000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(z, again) and z.shape == (20_000, 2)
    frequencies = torch.bincount(c, minlength=3).float() / len(c)
    assert torch.allclose(frequencies, torch.tensor([0.6, 0.3, 0.1]), atol=0.015)
    assert torch.allclose(z, prior.means.detach()[c], atol=0.06)


def test_set_mixture_checks_its_inputs():
    prior = GaussianMixturePrior(2, 3)
    with pytest.raises(ValueError, match=r"means must be shaped \(2, 3\)"):
        prior.set_mixture_(torch.ones(2), torch.zeros(3, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="positive"):
        prior.set_mixture_(torch.ones(2), torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"z must be shaped \(\.\.\., 3\)"):
        prior.log_prob(torch.zeros(4, 2))


# -- k-means and EM --------------------------------------------------------------------------------


def blobs(seed=0, n=300):
    gen = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = torch.arange(3).repeat_interleave(n // 3)
    scales = torch.tensor([0.3, 0.6, 1.2])[truth].unsqueeze(1)
    return centers[truth] + scales * torch.randn(len(truth), 2, generator=gen), truth


def test_kmeans_recovers_separated_clusters_deterministically():
    points, truth = blobs()
    fit = kmeans(points, 3, restarts=3, generator=torch.Generator().manual_seed(0))
    again = kmeans(points, 3, restarts=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(fit.labels, again.labels) and torch.equal(fit.centers, again.centers)
    assert clustering_accuracy(fit.labels, truth) == 1.0
    inertia = sum(float((points[fit.labels == j].double() - fit.centers[j]).pow(2).sum()) for j in range(3))
    assert math.isclose(fit.inertia, inertia, rel_tol=1e-9)


def test_em_recovers_weights_means_and_variances():
    points, truth = blobs(n=3000)
    fit = fit_gaussian_mixture(points, 3, restarts=2, generator=torch.Generator().manual_seed(0))
    # components in the order (0, 0), (0, 10), (10, 0)
    order = sorted(range(3), key=lambda j: (round(float(fit.means[j, 0])), round(float(fit.means[j, 1]))))
    means, variances = fit.means[order], fit.variances[order]
    assert torch.allclose(means, torch.tensor([[0.0, 0.0], [0.0, 10.0], [10.0, 0.0]], dtype=torch.float64), atol=0.15)
    assert torch.allclose(variances, torch.tensor([[0.09, 0.09], [1.44, 1.44], [0.36, 0.36]], dtype=torch.float64),
                          rtol=0.12)
    assert torch.allclose(fit.weights, torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.01)
    # the reported log-likelihood is that of the returned mixture
    prior = GaussianMixturePrior(3, 2).double()
    prior.set_mixture_(fit.weights, fit.means, fit.variances)
    with torch.no_grad():
        assert math.isclose(float(prior.log_prob(points.double()).mean()), fit.log_likelihood, rel_tol=1e-6)


def test_clustering_refuses_too_few_points():
    with pytest.raises(ValueError, match="cannot make 5 clusters from 3 point"):
        kmeans(torch.randn(3, 2), 5)
    with pytest.raises(ValueError, match="cannot make 4 clusters from 2 point"):
        fit_gaussian_mixture(torch.randn(2, 2), 4)
    with pytest.raises(ValueError, match="NaN"):
        kmeans(torch.tensor([[0.0], [math.nan]]), 1)


# -- Hungarian matching, accuracy, NMI ---------------------------------------------------------------


def test_hungarian_on_a_hand_case():
    cost = [[4, 1, 3],
            [2, 0, 5],
            [3, 2, 2]]
    # the optimum is 1 + 2 + 2 = 5: row 0 -> column 1, row 1 -> column 0, row 2 -> column 2
    assert hungarian(cost) == [1, 0, 2]
    assert linear_assignment(cost) == [(0, 1), (1, 0), (2, 2)]


@pytest.mark.parametrize("shape", [(6, 6), (4, 7), (7, 4)])
def test_assignment_is_optimal_against_brute_force(shape, monkeypatch):
    gen = torch.Generator().manual_seed(sum(shape))
    for _ in range(5):
        cost = torch.randint(0, 20, shape, generator=gen).tolist()
        rows, cols = shape
        if rows <= cols:
            best = min(sum(cost[i][p[i]] for i in range(rows)) for p in itertools.permutations(range(cols), rows))
        else:
            best = min(sum(cost[p[j]][j] for j in range(cols)) for p in itertools.permutations(range(rows), cols))
        found = sum(cost[i][j] for i, j in linear_assignment(cost))
        assert found == best
        if rows <= cols:
            assignment = hungarian(cost)
            assert len(set(assignment)) == rows and sum(cost[i][j] for i, j in enumerate(assignment)) == best
        with monkeypatch.context() as m:  # the fallback without scipy gives the same optimum
            m.setitem(__import__("sys").modules, "scipy.optimize", None)
            assert sum(cost[i][j] for i, j in linear_assignment(cost)) == best


def test_clustering_accuracy_on_hand_cases():
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    assert clustering_accuracy(labels, labels) == 1.0
    assert clustering_accuracy(torch.tensor([2, 2, 2, 0, 0, 1, 1, 1]), labels) == 1.0  # renamed clusters
    # cluster 5 holds two 0s and one 1, cluster 3 holds one 0 and one 1, cluster 1 holds the 2s:
    # the best map is 5->0, 3->1, 1->2: 2 + 1 + 3 = 6 of 8
    clusters = torch.tensor([5, 5, 3, 5, 3, 1, 1, 1])
    assert clustering_accuracy(clusters, labels) == 6 / 8
    assert clustering_accuracy(torch.zeros(8), labels) == 3 / 8  # one cluster matches one label only
    assert contingency(clusters, labels)[5].tolist() == [2, 1, 0]
    with pytest.raises(ValueError, match="same length"):
        clustering_accuracy(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="whole numbers"):
        clustering_accuracy(torch.tensor([0.5, 1.0]), torch.tensor([0, 1]))


def test_nmi_on_hand_cases():
    labels = torch.tensor([0, 0, 1, 1])
    assert normalized_mutual_information(torch.tensor([1, 1, 0, 0]), labels) == pytest.approx(1.0)
    assert normalized_mutual_information(torch.tensor([0, 1, 0, 1]), labels) == pytest.approx(0.0, abs=1e-12)
    # clusters [0, 0, 0, 1] vs labels [0, 0, 1, 1]: I = H(C) + H(Y) - H(C, Y)
    h = lambda *p: -sum(x * math.log(x) for x in p)  # noqa: E731
    mutual = h(0.75, 0.25) + h(0.5, 0.5) - h(0.5, 0.25, 0.25)
    expected = mutual / ((h(0.75, 0.25) + h(0.5, 0.5)) / 2)
    assert normalized_mutual_information(torch.tensor([0, 0, 0, 1]), labels) == pytest.approx(expected)


# -- the architecture --------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [SMALL, {**SMALL, "components": 2, "pretrain_epochs": 1}],
                         ids=["elbo", "pretraining"])
def test_conformance(config, tmp_path):
    check_architecture("mixture-vae", config=config, workdir=tmp_path)


def test_cluster_task_gives_a_component_index_per_image():
    torch.manual_seed(0)
    model = zoo.create("mixture-vae", **SMALL).eval()
    x = torch.rand(16, 1, 28, 28)
    out = model.run_task("cluster", x)
    assert out.shape == (16,) and out.dtype == torch.float32
    assert torch.equal(out, out.round()) and out.min() >= 0 and out.max() < 4
    with torch.no_grad():
        probabilities = model.cluster_probabilities(x)
    assert torch.allclose(probabilities.sum(1), torch.ones(16))
    assert torch.equal(probabilities.argmax(1).float(), out)
    assert zoo.TASKS["cluster"].input == "image" and zoo.TASKS["cluster"].output == "scalar"


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="components"):
        zoo.create("mixture-vae", components=0)
    with pytest.raises(ConfigError, match="pretrain_epochs"):
        zoo.create("mixture-vae", pretrain_epochs=-1)
    with pytest.raises(ConfigError, match="pretrain_corruption"):
        zoo.create("mixture-vae", pretrain_corruption=1.0)
    with pytest.raises(ConfigError, match="augment_shift"):
        zoo.create("mixture-vae", augment_shift=0.5)
    with pytest.raises(ConfigError, match="augment_rotation"):
        zoo.create("mixture-vae", augment_rotation=-1.0)


def test_iwae_and_kl_use_the_mixture_prior():
    """With one N(0, I) component the model's bounds are the standard VAE's; moving the prior changes them."""
    torch.manual_seed(0)
    model = zoo.create("mixture-vae", **{**SMALL, "components": 1}).eval()
    with torch.no_grad():
        model.prior.means.zero_()
    x = torch.bernoulli(torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0)))
    draw = lambda f: f(x, 50, generator=torch.Generator().manual_seed(3), chunk=20, max_pass=37)  # noqa: E731
    mixture = draw(model.importance_weighted_log_likelihood)
    standard = draw(lambda *a, **k: VariationalAutoencoder.importance_weighted_log_likelihood(model, *a, **k))
    assert torch.allclose(mixture, standard, atol=1e-4)
    with torch.no_grad():
        mu, logvar = model.posterior(x)
        assert torch.allclose(model.kl_divergence(mu, logvar), kl_standard_normal(mu, logvar), atol=1e-5)
        model.prior.means.fill_(3.0)
    assert (draw(model.importance_weighted_log_likelihood) < mixture - 1).all()


def test_iwae_is_a_logmeanexp_of_importance_weights():
    torch.manual_seed(0)
    model = zoo.create("mixture-vae", **SMALL).eval()
    x = torch.bernoulli(torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0)))
    value = model.importance_weighted_log_likelihood(x, 8, generator=torch.Generator().manual_seed(1), chunk=8)
    with torch.no_grad():
        mu, logvar = model.posterior(x)
        eps = torch.randn((8, 3, 3), generator=torch.Generator().manual_seed(1))
        z = mu + torch.exp(0.5 * logvar) * eps
        log_w = torch.stack([model.log_likelihood(model.decoder_logits(z[i]), x) + model.log_prior(z[i])
                             - model.log_posterior(z[i], mu, logvar) for i in range(8)])
    assert torch.allclose(value, torch.logsumexp(log_w, 0) - math.log(8), atol=1e-4)
    assert torch.isfinite(model.anomaly_score(x)).all()


def test_initialise_prior_fits_the_latents_and_says_when_there_are_too_few():
    model = zoo.create("mixture-vae", **{**SMALL, "components": 3, "init_restarts": 2})
    points, _ = blobs()
    latents = torch.cat([points, torch.zeros(len(points), 1)], 1)
    model.initialise_prior(latents, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert clustering_accuracy(model.prior.joint_log_prob(latents).argmax(1), blobs()[1]) == 1.0
    with pytest.raises(ValueError, match="cannot start a 3-component prior from 2 latent mean"):
        model.initialise_prior(latents[:2])


# -- training: the pretraining switch and exact resume ------------------------------------------------


def tiny_data(n=64):
    from zoo.data import ImageDataset

    images = torch.randint(0, 256, (n, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    make = lambda split, imgs: ImageDataset(imgs, torch.zeros(len(imgs), dtype=torch.int64),  # noqa: E731
                                            name="tiny", split=split, checksum="-")
    return make("fit", images), make("val", images[:16])


def train(out, epochs=3, interrupt_at=None, resume=False, **config):
    from zoo.training import TrainConfig, Trainer

    torch.manual_seed(0)
    model = zoo.create("mixture-vae", **{**SMALL, "components": 3, "pretrain_epochs": 2, "init_restarts": 2,
                                         **config})
    if interrupt_at is not None:
        hook = model.on_train_step_end

        def interrupting(step, terms):
            hook(step, terms)
            if step == interrupt_at:
                os.kill(os.getpid(), signal.SIGINT)  # the trainer finishes the step and checkpoints

        model.on_train_step_end = interrupting
    fit, val = tiny_data()
    config = TrainConfig(epochs=epochs, batch_size=16, val_batch_size=16, seed=0)
    result = Trainer(model, fit, val, config, out, data_name="tiny", progress=False, log=lambda _: None).fit(
        resume=resume)
    return model, result


def test_pretraining_switches_to_the_elbo_after_fitting_the_prior(tmp_path):
    model, result = train(tmp_path / "run")
    history = result.history
    assert set(history[0]["train"]) == {"loss", "reconstruction"}  # plain autoencoder
    assert set(history[1]["val"]) >= {"kl", "neg_elbo"}  # the prior is fitted before epoch 2's validation
    assert set(history[2]["train"]) >= {"kl", "neg_elbo"}
    assert int(model.epochs_trained) == 3 and int(model.pretrain_steps) == 8
    assert model.init_latents.shape == (0, 3)  # emptied after the fit: not shipped in the weights
    loaded = zoo.load(tmp_path / "run")
    assert loaded.init_latents.shape == (0, 3) and not loaded.pretraining
    # best/ is chosen among the ELBO epochs only: the pretraining's reconstruction loss is smaller, but it
    # is another quantity, and those weights have no fitted prior
    best = json.loads((tmp_path / "run" / "recipe.json").read_text())["best"]
    assert history[0]["val"]["loss"] < min(h["val"]["loss"] for h in history[1:])
    elbo_epochs = [h for h in history if "neg_elbo" in h["val"]]
    assert best["epoch"] == min(elbo_epochs, key=lambda h: h["val"]["loss"])["epoch"] >= 2
    assert not zoo.load(tmp_path / "run" / "best").pretraining


def test_denoising_pretraining_masks_the_encoder_input_and_collects_clean_codes():
    model = zoo.create("mixture-vae", **{**SMALL, "pretrain_epochs": 1, "pretrain_corruption": 0.5}).train()
    x = (torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    seen = []
    model.encoder.register_forward_pre_hook(lambda _, args: seen.append(args[0].view_as(x).clone()))
    torch.manual_seed(1)
    noisy = model.loss(x, step=1)
    masked = seen[0]
    assert torch.equal(masked, masked * x)  # pixels are only zeroed, never moved or set
    dropped = 1 - masked.sum() / x.sum()
    assert 0.45 < dropped < 0.55
    assert torch.equal(seen[1], x)  # the collecting epoch keeps the clean images' codes for the mixture
    with torch.no_grad():
        assert torch.equal(model._pending, model.posterior(x)[0])
    model._pending = None
    torch.manual_seed(1)
    assert torch.equal(model.loss(x, step=1)["loss"], noisy["loss"])  # the global RNG draws the mask
    model.eval()
    clean = model.loss(x, step=1)["loss"]
    assert torch.equal(seen[-1], x) and not torch.equal(clean, noisy["loss"])  # validation is not corrupted


def test_augmentation_moves_training_batches_in_both_phases_and_collects_unmoved_codes():
    model = zoo.create("mixture-vae", **{**SMALL, "pretrain_epochs": 1, "augment_shift": 0.2,
                                         "augment_rotation": 20.0}).train()
    torch.manual_seed(0)  # the global RNG draws the moves, as it draws the trainer's other noise
    x = (torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0)) > 0.7).float()
    seen = []
    model.encoder.register_forward_pre_hook(lambda _, args: seen.append(args[0].view_as(x).clone()))
    targets = []
    real_likelihood = model.log_likelihood
    model.log_likelihood = lambda logits, target: targets.append(target) or real_likelihood(logits, target)
    model.loss(x, step=1)  # pretraining: the moved image is both the input and the target
    moved = seen[0]
    assert set(moved.unique().tolist()) <= {0.0, 1.0}
    assert sum(not torch.equal(moved[i], x[i]) for i in range(64)) >= 60  # a draw can be too small to move pixels
    assert torch.equal(targets[0], moved)
    assert torch.equal(seen[1], x)  # the collecting epoch keeps the unmoved images' codes for the mixture
    model._pending = None
    model.epochs_trained.fill_(1)  # the ELBO phase
    model.loss(x, step=2)
    assert not torch.equal(seen[2], x) and torch.equal(targets[1], seen[2])
    model.eval()
    model.loss(x, step=3)
    assert torch.equal(seen[3], x) and torch.equal(targets[2], x)  # validation sees the images as they are


@pytest.mark.parametrize("config", [{}, {"pretrain_corruption": 0.3}, {"augment_shift": 0.1, "augment_rotation": 10}],
                         ids=["plain", "denoising", "augmented"])
def test_resume_is_exact_across_an_interruption_while_collecting_latents(tmp_path, config):
    from zoo.training import Interrupted

    straight, _ = train(tmp_path / "straight", **config)
    with pytest.raises(Interrupted):  # step 6 of 12: mid epoch 2, the collecting epoch
        train(tmp_path / "resumed", interrupt_at=6, **config)
    partial = zoo.load(tmp_path / "resumed")
    collected = len(partial.init_latents)  # the batches collected so far were checkpointed with the weights
    assert 0 < collected < 64 and collected % 16 == 0 and partial.pretraining
    resumed, _ = train(tmp_path / "resumed", resume=True, **config)
    for name, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name


# -- the pretrained model ------------------------------------------------------------------------------


PRETRAINED = "mixture-vae-mnist"


@pytest.mark.skipif(PRETRAINED not in mixture_vae.PRETRAINED, reason="no pretrained mixture-vae pinned")
def test_pretrained_model_loads_with_its_pinned_sha256():
    from zoo.checkpoint import sha256_file

    info = zoo.info(PRETRAINED)
    assert info["sha256"] == mixture_vae.PRETRAINED[PRETRAINED]
    assert sha256_file(Path(info["bundled"]) / "model.safetensors") == info["sha256"]
    model = zoo.load(PRETRAINED)
    assert isinstance(model, MixtureVAE) and model.config.components == 10 and not model.pretraining


@pytest.mark.skipif(PRETRAINED not in mixture_vae.PRETRAINED, reason="no pretrained mixture-vae pinned")
def test_pretrained_model_clusters_mnist_test_digits():
    import zoo.data

    if not zoo.data.is_fetched("mnist"):
        pytest.skip("MNIST is not fetched (zoo data fetch mnist)")
    test = zoo.data.load("mnist", "test")
    x, labels = test.images[:1000].float() / 255, test.labels[:1000]
    model = zoo.load(PRETRAINED)
    clusters = model.run_task("cluster", x)
    assert clustering_accuracy(clusters, labels) > ACCURACY_FLOOR
    assert normalized_mutual_information(clusters, labels) > NMI_FLOOR


#: Floors just under what the shipped model measured on these 1000 grey test images (accuracy 0.927,
#: NMI 0.864; on all 10,000: 0.945 and 0.886, see model_cards/mixture-vae-mnist/clustering.json).
ACCURACY_FLOOR = 0.91
NMI_FLOOR = 0.85
