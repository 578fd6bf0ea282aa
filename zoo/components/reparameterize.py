"""Gaussian reparameterization: z = mu + sigma * eps with sigma = exp(logvar / 2)."""

import math

import torch
from torch import nn

_LOG_2PI = math.log(2 * math.pi)


class GaussianReparameterization(nn.Module):
    """Draws z from N(mu, diag(exp(logvar))) differentiably.

    In training mode it samples. In eval mode it returns ``mu`` unless
    ``sample=True`` is passed, so evaluation and serving are deterministic.
    """

    def forward(
        self,
        mu: torch.Tensor,
        logvar: torch.Tensor,
        *,
        sample: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        if sample is None:
            sample = self.training
        if not sample:
            return mu
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + torch.exp(0.5 * logvar) * eps


def log_normal_standard(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I), summed over the last dimension."""
    return -0.5 * (z.pow(2) + _LOG_2PI).sum(-1)


def negative_entropy_diagonal(logvar: torch.Tensor) -> torch.Tensor:
    """``E_q[log q(z)]`` for ``q = N(mu, diag(exp(logvar)))``, summed over the last dimension (any ``mu``)."""
    return -0.5 * (logvar + 1.0 + _LOG_2PI).sum(-1)


def log_normal_diagonal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag(exp(logvar))), summed over the last dimension."""
    return -0.5 * ((z - mu).pow(2) * torch.exp(-logvar) + logvar + _LOG_2PI).sum(-1)
