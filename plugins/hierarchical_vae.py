"""hierarchical-vae: a VAE with two stochastic layers, top-down (Tomczak & Welling's HVAE, L = 2).

Generative model, top-down::

    z2 ~ p(z2)                          N(0, I), or the VampPrior over q(z2 | pseudo-inputs) (prior = "vamp")
    z1 | z2 ~ N(m(z2), diag(s(z2)^2))   bottom_prior(z2)
    x | z1, z2 ~ Bernoulli(decoder([z1, z2]))   (or the Gaussian likelihood)

Inference, bottom-up then conditioned on the top::

    q(z2 | x) = N(top_posterior(x)),  q(z1 | x, z2) = N(bottom_posterior(x, z2))

The networks are dense (``network = "dense"``) or convolutional (``"conv"``); the convolutional ones
reuse the zoo's ConvEncoder/ConvDecoder blocks.

The latent code is the concatenation ``z = [z1, z2]``: the model's ``latent_dim`` is the config's
``latent_dim`` (the size of z1) plus ``top_dim``. Every task that takes or returns a code works unchanged:
``encode`` gives ``[mean of q(z1 | x, z2 = mean of q(z2 | x)), mean of q(z2 | x)]``, ``decode`` maps a code
to the image, ``sample`` draws top-down.

What an importance-weighted bound ``log (1/k) sum_j p(x, z_j) / q(z_j | x)`` needs, all public:

- ``log p(x | z)``: ``log_likelihood(decoder_logits(z), x)``;
- ``log p(z) = log p(z1 | z2) + log p(z2)``: ``log_prior(z)``;
- ``log q(z | x) = log q(z1 | x, z2) + log q(z2 | x)``: ``log_posterior(z, x)``;
- draws ``z_j ~ q(z | x)``: ``importance_proposal(x)`` (z2 first, then z1 given it), which ``zoo eval``'s
  NLL uses.

``posterior(x)`` is the diagonal Gaussian along the mean path (z1's parameters given the mean of z2):
``zoo eval``'s negative ELBO and KL, and the anomaly score, are computed with it, which is a valid but
looser bound than the trained ``q``; the NLL uses the trained, hierarchical ``q``.
"""

import dataclasses

import torch
from torch import nn

import zoo
from zoo.components import (
    MLP,
    ConvDecoder,
    ConvEncoder,
    activation,
    elbo,
    importance_weighted_bound,
    kl_diagonal_normals,
    kl_standard_normal,
    log_normal_standard,
)
from zoo.components.blocks import ACTIVATIONS, divisible_side
from zoo.components.reparameterize import log_normal_diagonal
from zoo.vae import VAEConfig, VariationalAutoencoder, sigma_point_kl
from zoo_plugins.pretrained import bundled_entries

PRETRAINED: dict[str, str] = {  # name -> sha256 of model.safetensors
    "hierarchical-vae-mnist": "7b5fb14ca5288f5dcc99cf8f6a7618419097fab3148dcc51d29075e2dc38832c",
}

NETWORKS = ("dense", "conv")
#: Bounds of the log-variances of the Gaussians conditioned on another latent, as in Tomczak & Welling's
#: code: they keep early training from dividing by a vanishing variance.
LOGVAR_RANGE = (-6.0, 2.0)


@dataclasses.dataclass
class HierarchicalVAEConfig(VAEConfig):
    """``latent_dim`` is the size of the bottom latent z1 and ``top_dim`` that of the top latent z2.

    ``network``: ``dense`` (MLPs of width ``hidden``) or ``conv`` (stride-2 stages of ``channels``,
    then a dense layer of width ``hidden``). ``prior`` (``standard`` or ``vamp``) is the prior of z2.
    """

    latent_dim: int = 40
    top_dim: int = 40
    network: str = "dense"
    hidden: int = 300
    channels: tuple[int, ...] = (32, 64)
    activation: str = "relu"

    def validate(self) -> None:
        super().validate()
        self.require_positive("top_dim", "hidden")
        self.require_choice("network", NETWORKS)
        self.require_choice("activation", ACTIVATIONS)
        if self.network == "conv":
            self.require(len(self.channels) > 0, "channels", "needs at least one stage")
            self.require_positive("channels")
            self.require(divisible_side(self.image_size, len(self.channels)), "image_size",
                         f"must be divisible by 2**{len(self.channels)} (one halving per entry of channels)")


def _gaussian(params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a network's output into (mu, logvar), the log-variance kept inside ``LOGVAR_RANGE``."""
    mu, logvar = params.chunk(2, dim=-1)
    return mu, logvar.clamp(*LOGVAR_RANGE)


class HierarchicalVAE(VariationalAutoencoder):
    """VAE with latents z2 -> z1 -> x; its code is ``[z1, z2]``. See the module docstring for the densities."""

    architecture = "hierarchical-vae"
    config_class = HierarchicalVAEConfig
    presets = {
        "mnist-dense": {"network": "dense", "hidden": 300, "latent_dim": 40, "top_dim": 40},
        "mnist-conv": {"network": "conv", "channels": [32, 64], "hidden": 300, "latent_dim": 40, "top_dim": 40},
    }

    def __init__(self, config: HierarchicalVAEConfig):
        super().__init__(config)
        c = config
        width, act = c.hidden, c.activation
        if c.network == "conv":
            self.features = nn.Sequential(
                ConvEncoder(c.image_channels, c.channels, c.image_size, width, 0, act), activation(act))
            self.decoder = ConvDecoder(c.latent_dim + c.top_dim, c.channels, c.image_channels, c.image_size, width, act)
        else:
            pixels = c.image_channels * c.image_size ** 2
            self.features = nn.Sequential(nn.Flatten(), MLP(pixels, [width], width, act), activation(act))
            self.decoder = nn.Sequential(MLP(c.latent_dim + c.top_dim, [width, width], pixels, act),
                                         nn.Unflatten(1, self.input_shape))
        self.top_head = nn.Linear(width, 2 * c.top_dim)
        self.bottom_head = MLP(width + c.top_dim, [width], 2 * c.latent_dim, act)
        self.bottom_prior_net = MLP(c.top_dim, [width], 2 * c.latent_dim, act)

    @property
    def latent_dim(self) -> int:
        """Length of the code ``[z1, z2]``."""
        return self.config.latent_dim + self.config.top_dim

    def split(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A code ``[z1, z2]`` (..., latent_dim) as ``(z1, z2)``."""
        return z[..., :self.config.latent_dim], z[..., self.config.latent_dim:]

    # -- the conditionals -------------------------------------------------------------------

    def top_posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``q(z2 | x)`` as (mu, logvar), each (N, top_dim)."""
        return self._top_from_features(self.features(x))

    def _top_from_features(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.top_head(h).chunk(2, dim=-1)

    def _bottom_from_features(self, h: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _gaussian(self.bottom_head(torch.cat([h.expand(*z2.shape[:-1], h.shape[-1]), z2], dim=-1)))

    def bottom_posterior(self, x: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``q(z1 | x, z2)`` as (mu, logvar), each shaped like ``z2`` with ``latent_dim`` last.

        ``z2`` is (N, top_dim), or (S, N, top_dim) for S draws per image of ``x`` (N images).
        """
        return self._bottom_from_features(self.features(x), z2)

    def bottom_prior(self, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``p(z1 | z2)`` as (mu, logvar) for top latents (..., top_dim)."""
        return _gaussian(self.bottom_prior_net(z2))

    def log_top_prior(self, z2: torch.Tensor) -> torch.Tensor:
        """``log p(z2)``: the standard normal, or the VampPrior over ``q(z2 | pseudo-inputs)``."""
        if self.vamp_prior is not None:
            return self.vamp_prior.log_prob(z2, self.top_posterior)
        return log_normal_standard(z2)

    # -- the densities of the code [z1, z2] ----------------------------------------------------

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean-path Gaussian over ``[z1, z2]``: ``q(z2 | x)`` and ``q(z1 | x, z2 = its mean)``."""
        h = self.features(x)
        mu2, logvar2 = self._top_from_features(h)
        mu1, logvar1 = self._bottom_from_features(h, mu2)
        return torch.cat([mu1, mu2], -1), torch.cat([logvar1, logvar2], -1)

    def decoder_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """``log p(z1 | z2) + log p(z2)`` for codes (..., latent_dim)."""
        z1, z2 = self.split(z)
        return log_normal_diagonal(z1, *self.bottom_prior(z2)) + self.log_top_prior(z2)

    def log_posterior(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``log q(z1 | x, z2) + log q(z2 | x)`` for codes (N, latent_dim) or (S, N, latent_dim) of images x (N)."""
        z1, z2 = self.split(z)
        h = self.features(x)
        mu2, logvar2 = self._top_from_features(h)
        return log_normal_diagonal(z1, *self._bottom_from_features(h, z2)) + log_normal_diagonal(z2, mu2, logvar2)

    def kl_divergence(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """KL of the mean-path Gaussian (:meth:`posterior`) from the hierarchical prior, by sigma points.

        The prior's networks run in their own dtype; the result comes back in ``mu``'s (e.g. float64).
        """
        dtype = self.top_head.weight.dtype
        return sigma_point_kl(mu.to(dtype), logvar.to(dtype), self.log_prior).to(mu.dtype)

    def importance_proposal(self, x, posterior=None):
        """Draws from the trained ``q(z2 | x) q(z1 | x, z2)``: the first ``top_dim`` noise coordinates of
        each draw give z2, the rest z1. ``posterior`` (the mean-path Gaussian) is not needed and ignored."""
        d1 = self.config.latent_dim
        h = self.features(x)
        mu2, logvar2 = self._top_from_features(h)

        def draw(eps: torch.Tensor, cols: slice) -> tuple[torch.Tensor, torch.Tensor]:
            z2 = mu2[cols] + torch.exp(0.5 * logvar2[cols]) * eps[..., d1:]
            mu1, logvar1 = self._bottom_from_features(h[cols], z2)
            z1 = mu1 + torch.exp(0.5 * logvar1) * eps[..., :d1]
            log_q = log_normal_diagonal(z1, mu1, logvar1) + log_normal_diagonal(z2, mu2[cols], logvar2[cols])
            return torch.cat([z1, z2], -1), log_q

        return draw

    @torch.no_grad()
    def prior_moments(self, draws: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of each coordinate of ``[z1, z2]`` under the prior.

        z2's are exact (0 and 1, or the VampPrior's mixture moments); z1's marginal has no closed form
        and is estimated from ``draws`` top latents drawn with a fixed seed (law of total variance), so
        it is the same on every call.
        """
        generator = torch.Generator(device=self.device).manual_seed(0)
        z2 = self._draw_top(draws, generator)
        mu1, logvar1 = self.bottom_prior(z2)
        mean1, std1 = mu1.mean(0), (logvar1.exp().mean(0) + mu1.var(0, unbiased=False)).sqrt()
        if self.vamp_prior is not None:
            mean2, std2 = self.vamp_prior.moments(self.top_posterior)
        else:
            mean2, std2 = torch.zeros_like(z2[0]), torch.ones_like(z2[0])
        return torch.cat([mean1, mean2]), torch.cat([std1, std2])

    # -- training and sampling -------------------------------------------------------------------

    def loss(self, batch: torch.Tensor, step: int | None = None) -> dict[str, torch.Tensor]:
        """The negative ELBO of the hierarchy (``iwae_samples = 1``) or its negative IWAE bound (``k > 1``).

        The ELBO's KL is ``KL(q(z2|x) || p(z2))`` (analytic for N(0, I), a one-sample estimate for the
        VampPrior) plus ``KL(q(z1|x,z2) || p(z1|z2))``, analytic given the sampled z2.
        """
        k = self.config.iwae_samples
        weight = self.kl_schedule(step)
        h = self.features(batch)
        mu2, logvar2 = self._top_from_features(h)
        shape = (k, *mu2.shape) if k > 1 else mu2.shape
        z2 = mu2 + torch.exp(0.5 * logvar2) * torch.randn(shape, device=mu2.device, dtype=mu2.dtype)
        mu1, logvar1 = self._bottom_from_features(h, z2)
        z1 = mu1 + torch.exp(0.5 * logvar1) * torch.randn_like(mu1)
        prior_mu1, prior_logvar1 = self.bottom_prior(z2)
        logits = self.decoder_logits(torch.cat([z1, z2], -1).reshape(-1, self.latent_dim))
        targets = batch if k == 1 else batch.unsqueeze(0).expand(k, *batch.shape).reshape(-1, *batch.shape[1:])
        log_px_z = self.log_likelihood(logits, targets).view(shape[:-1])
        if k == 1:
            top_kl = (kl_standard_normal(mu2, logvar2) if self.vamp_prior is None
                      else log_normal_diagonal(z2, mu2, logvar2) - self.log_top_prior(z2))
            kl = top_kl + kl_diagonal_normals(mu1, logvar1, prior_mu1, prior_logvar1)
            return elbo(log_px_z, kl, weight).as_dict()
        log_ratio = (log_normal_diagonal(z1, prior_mu1, prior_logvar1) + self.log_top_prior(z2)
                     - log_normal_diagonal(z1, mu1, logvar1) - log_normal_diagonal(z2, mu2, logvar2))
        bound = importance_weighted_bound(log_px_z + weight * log_ratio)
        terms = elbo(log_px_z.mean(0).detach(), -log_ratio.mean(0).detach(), weight).as_dict()
        return {**terms, "loss": -bound.mean(), "neg_iwae": -bound.mean().detach()}

    def _draw_top(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        if self.vamp_prior is not None:
            return self.vamp_prior.sample(n, self.top_posterior, generator)
        return torch.randn(n, self.config.top_dim, generator=generator, device=self.device,
                           dtype=self.top_head.weight.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw z2 from its prior, z1 from ``p(z1 | z2)``, and decode ``[z1, z2]``."""
        z2 = self._draw_top(n, generator)
        mu1, logvar1 = self.bottom_prior(z2)
        z1 = mu1 + torch.exp(0.5 * logvar1) * torch.randn(mu1.shape, generator=generator, device=mu1.device,
                                                            dtype=mu1.dtype)
        return self.decode(torch.cat([z1, z2], -1))


@zoo.hookimpl
def register_architectures(register):
    register(HierarchicalVAE)


@zoo.hookimpl
def register_models(register):
    for entry in bundled_entries(PRETRAINED):
        register(entry)
