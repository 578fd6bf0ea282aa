"""The VampPrior (Tomczak & Welling 2018): a prior made of the encoder's own posteriors.

``p(z) = (1/K) sum_k q(z | u_k)``: an equal-weight mixture of the diagonal-Gaussian posteriors at
``K`` learned *pseudo-inputs* ``u_k`` (images in [0, 1], trained with the rest of the model). The
prior follows the aggregate posterior instead of pulling every code towards N(0, I), which is
what makes it a richer prior for the same networks.
"""

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from zoo.components.mixture_prior import mixture_moments
from zoo.components.reparameterize import _LOG_2PI

Posterior = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def log_normal_components(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``log N(z; mu_k, diag(exp(logvar_k)))`` for every row ``k`` of ``mu``/``logvar`` (K, D): shape (..., K).

    Expands the square into matrix products, in float64 so that the expansion loses nothing to
    cancellation, and never holds a (..., K, D) tensor. Returns ``z``'s dtype.
    """
    flat = z.reshape(-1, z.shape[-1]).double()
    precision = torch.exp(-logvar.double())  # (K, D)
    quadratic = (flat.pow(2) @ precision.T - 2 * flat @ (mu.double() * precision).T
                 + (mu.double().pow(2) * precision).sum(-1))
    log_prob = -0.5 * (quadratic + logvar.double().sum(-1) + z.shape[-1] * _LOG_2PI)
    return log_prob.to(z.dtype).reshape(*z.shape[:-1], mu.shape[0])


class VampPrior(nn.Module):
    """``p(z) = (1/K) sum_k q(z | u_k)`` over ``pseudo_inputs`` = K learned images of ``input_shape``.

    The pseudo-inputs start near ``init_mean`` (nearly black images, as Tomczak & Welling start
    them for MNIST) and are clamped to [0, 1] where used. ``posterior`` is the encoder: a callable
    ``x -> (mu, logvar)``, passed in so that the prior always uses the encoder's current weights.
    """

    def __init__(self, pseudo_inputs: int, input_shape: Sequence[int], init_mean: float = 0.05,
                 init_std: float = 0.01):
        super().__init__()
        if pseudo_inputs < 1:
            raise ValueError(f"a VampPrior needs at least one pseudo-input, got {pseudo_inputs}")
        self.inputs = nn.Parameter(init_mean + init_std * torch.randn(pseudo_inputs, *input_shape))

    @property
    def components(self) -> int:
        """K, the number of pseudo-inputs."""
        return self.inputs.shape[0]

    def pseudo_inputs(self) -> torch.Tensor:
        """The pseudo-inputs as images in [0, 1], shape (K, *input_shape)."""
        return self.inputs.clamp(0.0, 1.0)

    def log_prob(self, z: torch.Tensor, posterior: Posterior) -> torch.Tensor:
        """``log p(z)`` for latents shaped (..., D): shape (...)."""
        mu, logvar = posterior(self.pseudo_inputs())
        return torch.logsumexp(log_normal_components(z, mu, logvar), dim=-1) - math.log(self.components)

    def moments(self, posterior: Posterior) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of each coordinate of ``z`` under the prior, each shape (D,)."""
        mu, logvar = posterior(self.pseudo_inputs())
        return mixture_moments(torch.full((self.components,), 1 / self.components, device=mu.device), mu, logvar.exp())

    def sample(self, n: int, posterior: Posterior, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws: a pseudo-input uniformly at random, then a latent from its posterior; shape (n, D)."""
        mu, logvar = posterior(self.pseudo_inputs())
        which = torch.randint(self.components, (n,), generator=generator, device=mu.device)
        eps = torch.randn((n, mu.shape[-1]), generator=generator, device=mu.device, dtype=mu.dtype)
        return mu[which] + torch.exp(0.5 * logvar[which]) * eps
