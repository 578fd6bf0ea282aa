"""KL divergence, reconstruction log-likelihoods and ELBO assembly.

All functions return one value per sample (summed over every non-batch
dimension), so callers choose how to reduce over the batch.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _per_sample_sum(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).sum(1)


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Analytic KL(N(mu, exp(logvar)) || N(0, I)), summed per sample."""
    return _per_sample_sum(0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar))


def kl_diagonal_normals(mu_q: torch.Tensor, logvar_q: torch.Tensor, mu_p: torch.Tensor,
                        logvar_p: torch.Tensor) -> torch.Tensor:
    """Analytic KL(N(mu_q, exp(logvar_q)) || N(mu_p, exp(logvar_p))) of diagonal Gaussians, summed over the last dimension."""
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p).pow(2)) * torch.exp(-logvar_p) - 1.0).sum(-1)


def bernoulli_log_likelihood(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log p(target | logits) under independent Bernoullis, summed per sample.

    Computed from logits with ``binary_cross_entropy_with_logits`` (log-sum-exp
    stable), never as sigmoid followed by BCE. ``target`` may be fractional.
    """
    return -_per_sample_sum(F.binary_cross_entropy_with_logits(logits, target, reduction="none"))


def gaussian_log_likelihood(mean: torch.Tensor, target: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """log N(target; mean, sigma^2 I), summed per sample. With sigma=1 this is -MSE/2 up to a constant."""
    log_norm = math.log(sigma) + 0.5 * math.log(2 * math.pi)
    return -_per_sample_sum(0.5 * ((target - mean) / sigma).pow(2) + log_norm)


@dataclass(frozen=True)
class KLWarmup:
    """KL weight schedule: ramps linearly from 0 to ``beta`` over ``steps`` optimiser steps."""

    beta: float = 1.0
    steps: int = 0

    def __call__(self, step: int | None) -> float:
        if step is None or self.steps <= 0:
            return self.beta
        return self.beta * min(1.0, step / self.steps)


@dataclass
class ELBO:
    """Batch-averaged ELBO terms. ``loss`` is what the optimiser minimises."""

    loss: torch.Tensor
    reconstruction: torch.Tensor
    kl: torch.Tensor
    kl_weight: float

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {
            "loss": self.loss,
            "reconstruction": self.reconstruction,
            "kl": self.kl,
            "neg_elbo": self.reconstruction + self.kl,
        }


def importance_weighted_bound(log_weights: torch.Tensor) -> torch.Tensor:
    """The IWAE bound ``log (1/k) sum_j exp(log_weights[j])`` per sample, from log-weights shaped (k, N).

    With ``log_weights = log p(x, z_j) - log q(z_j | x)`` for ``k`` draws ``z_j ~ q(z | x)`` it is a lower
    bound on ``log p(x)`` that tightens as ``k`` grows (Burda et al. 2016); at ``k = 1`` it is the ELBO's
    one-sample estimate.
    """
    if log_weights.dim() != 2 or log_weights.shape[0] < 1:
        raise ValueError(f"log_weights must be shaped (k, N) with k >= 1, got {tuple(log_weights.shape)}")
    return torch.logsumexp(log_weights, dim=0) - math.log(log_weights.shape[0])


def elbo(log_likelihood: torch.Tensor, kl: torch.Tensor, kl_weight: float = 1.0) -> ELBO:
    """Assemble the (beta-weighted) negative ELBO from per-sample log-likelihoods and KLs."""
    reconstruction = -log_likelihood.mean()
    kl_mean = kl.mean()
    return ELBO(loss=reconstruction + kl_weight * kl_mean, reconstruction=reconstruction, kl=kl_mean, kl_weight=kl_weight)
