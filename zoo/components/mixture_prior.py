"""A Gaussian-mixture prior over latent codes (as in VaDE, Jiang et al. 2017), and the seeded
clustering routines that initialise it: k-means (k-means++ seeding) and EM for a mixture of
diagonal Gaussians.

Densities, for a latent ``z`` in R^D and K components (all logs natural, all sums over the D
latent dimensions written out; ``log 2pi`` terms included, so every value is a true log density):

- mixture weights: ``p(c) = pi_c = softmax(logits)_c``;
- components: ``p(z | c) = N(z; mu_c, diag(sigma_c^2))`` with ``sigma_c^2 = exp(logvars_c)``;
- prior: ``log p(z) = logsumexp_c [log pi_c + log N(z; mu_c, sigma_c^2)]``
  (:meth:`GaussianMixturePrior.log_prob`), where
  ``log N(z; mu, sigma^2) = -1/2 sum_j [log 2pi + log sigma_j^2 + (z_j - mu_j)^2 / sigma_j^2]``;
- component posterior: ``p(c | z) = pi_c N(z; mu_c, sigma_c^2) / p(z)``
  (:meth:`GaussianMixturePrior.responsibilities`), what VaDE takes for ``q(c | x)``.

With a Gaussian encoder ``q(z | x) = N(z; m, diag(s^2))`` the expectations VaDE needs are analytic:

- ``E_q[log N(z; mu_c, sigma_c^2)] = -1/2 sum_j [log 2pi + log sigma_cj^2 + (s_j^2 + (m_j - mu_cj)^2) / sigma_cj^2]``
  (:meth:`GaussianMixturePrior.expected_component_log_prob`);
- ``E_q[log q(z | x)] = -1/2 sum_j [log 2pi + 1 + log s_j^2]``;
- for any ``q(c | x) = gamma`` (:meth:`GaussianMixturePrior.kl`):
  ``KL(q(z|x) q(c|x) || p(z, c)) = E_q[log q(z|x)] + sum_c gamma_c [log gamma_c - log pi_c - E_q[log N(z; mu_c, sigma_c^2)]]``.
  The VaDE ELBO is ``E_q[log p(x | z)]`` minus this. It is a lower bound on ``log p(x)`` for any
  ``gamma``; the ``gamma`` that maximises it is ``q*(c | x) ∝ pi_c exp(E_q[log N(z; mu_c, sigma_c^2)])``
  (:meth:`GaussianMixturePrior.posterior_responsibilities`), which gives
  ``KL = E_q[log q(z|x)] - logsumexp_c [log pi_c + E_q[log N(z; mu_c, sigma_c^2)]]``.
  Both are >= ``KL(q(z|x) || p(z))`` (the marginal KL, which has no closed form for a mixture).

Everything is computed in log space with ``logsumexp``/``log_softmax``; no density is exponentiated
before it is normalised. The clustering routines draw from ``generator`` (the global RNG when
None), so they are deterministic given its seed; they work in float64.
"""

import dataclasses
import math

import torch
from torch import nn

from zoo.components.reparameterize import _LOG_2PI, negative_entropy_diagonal


def mixture_moments(weights: torch.Tensor, means: torch.Tensor, variances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std of a diagonal Gaussian mixture (weights (K,), means and variances (K, D)).

    Computed in float64 (the variance is a difference of second moments); returned in float32.
    """
    weights, means, variances = (t.double() for t in (weights, means, variances))
    mean = weights @ means
    variance = weights @ (variances + means.pow(2)) - mean.pow(2)
    return mean.float(), variance.clamp(min=0).sqrt().float()


class GaussianMixturePrior(nn.Module):
    """``p(z) = sum_c pi_c N(z; mu_c, diag(sigma_c^2))`` with learnable ``logits``, ``means`` and ``logvars``.

    Built with uniform weights, means drawn from N(0, I) (from the global RNG, like any weight
    initialisation) and unit variances; :meth:`set_mixture_` replaces them, e.g. with a
    :func:`fit_gaussian_mixture` result. Every method takes latents shaped ``(..., D)`` and returns
    per-latent values shaped ``(...)`` or per-component values shaped ``(..., K)``.
    """

    def __init__(self, components: int, dim: int):
        super().__init__()
        if components < 1 or dim < 1:
            raise ValueError(f"a Gaussian mixture needs >= 1 component and dimension, got {components} and {dim}")
        self.logits = nn.Parameter(torch.zeros(components))
        self.means = nn.Parameter(torch.randn(components, dim))
        self.logvars = nn.Parameter(torch.zeros(components, dim))

    @property
    def components(self) -> int:
        return self.logits.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def weights(self) -> torch.Tensor:
        """``pi``, shape (K,)."""
        return torch.softmax(self.logits, dim=0)

    @property
    def log_weights(self) -> torch.Tensor:
        """``log pi``, shape (K,)."""
        return torch.log_softmax(self.logits, dim=0)

    @property
    def variances(self) -> torch.Tensor:
        """``sigma^2``, shape (K, D)."""
        return self.logvars.exp()

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of each coordinate of ``z`` under the mixture, each shape (D,)."""
        return mixture_moments(self.weights, self.means, self.variances)

    def _check(self, z: torch.Tensor, what: str = "z") -> None:
        if z.shape[-1:] != (self.dim,):
            raise ValueError(f"{what} must be shaped (..., {self.dim}) for this {self.dim}-dimensional prior, "
                             f"got {tuple(z.shape)}")

    def component_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log N(z; mu_c, sigma_c^2)`` for every component, shape (..., K)."""
        self._check(z)
        diff = z.unsqueeze(-2) - self.means  # (..., K, D)
        return -0.5 * (diff.pow(2) * torch.exp(-self.logvars) + self.logvars + _LOG_2PI).sum(-1)

    def joint_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log p(z, c) = log pi_c + log N(z; mu_c, sigma_c^2)``, shape (..., K)."""
        return self.log_weights + self.component_log_prob(z)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log p(z)``, the mixture's log density, shape (...)."""
        return torch.logsumexp(self.joint_log_prob(z), dim=-1)

    def log_responsibilities(self, z: torch.Tensor) -> torch.Tensor:
        """``log p(c | z)``, shape (..., K)."""
        return torch.log_softmax(self.joint_log_prob(z), dim=-1)

    def responsibilities(self, z: torch.Tensor) -> torch.Tensor:
        """``p(c | z)``, shape (..., K); each row sums to 1."""
        return torch.softmax(self.joint_log_prob(z), dim=-1)

    def expected_component_log_prob(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """``E_{z ~ N(mu, diag(exp(logvar)))}[log N(z; mu_c, sigma_c^2)]`` for every component, shape (..., K)."""
        self._check(mu, "mu")
        self._check(logvar, "logvar")
        spread = logvar.exp().unsqueeze(-2) + (mu.unsqueeze(-2) - self.means).pow(2)  # (..., K, D)
        return -0.5 * (spread * torch.exp(-self.logvars) + self.logvars + _LOG_2PI).sum(-1)

    def expected_joint_log_prob(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """``log pi_c + E_q[log N(z; mu_c, sigma_c^2)]``, shape (..., K)."""
        return self.log_weights + self.expected_component_log_prob(mu, logvar)

    def posterior_responsibilities(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """The ``q(c | x)`` that maximises the ELBO given ``q(z | x) = N(mu, diag(exp(logvar)))``, shape (..., K)."""
        return torch.softmax(self.expected_joint_log_prob(mu, logvar), dim=-1)

    def kl(self, mu: torch.Tensor, logvar: torch.Tensor, log_responsibilities: torch.Tensor | None = None,
           ) -> torch.Tensor:
        """``KL(q(z|x) q(c|x) || p(z, c))`` per latent, shape (...): the VaDE ELBO's regulariser.

        ``q(z|x) = N(mu, diag(exp(logvar)))``; ``q(c|x)`` is given by its logarithm
        ``log_responsibilities`` (..., K), e.g. :meth:`log_responsibilities` of a sample of
        ``q(z|x)`` as in VaDE, or, when None, the optimal ``q*(c|x)`` (see the module docstring).
        """
        expected = self.expected_joint_log_prob(mu, logvar)
        log_q_z = negative_entropy_diagonal(logvar)  # E_q[log q(z|x)]
        if log_responsibilities is None:
            return log_q_z - torch.logsumexp(expected, dim=-1)
        if log_responsibilities.shape != expected.shape:
            raise ValueError(f"log_responsibilities must be shaped {tuple(expected.shape)}, "
                             f"got {tuple(log_responsibilities.shape)}")
        gamma = log_responsibilities.exp()
        return log_q_z + (gamma * (log_responsibilities - expected)).sum(-1)

    def sample(self, n: int, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` draws ``(z, c)``: a component ``c ~ pi``, then ``z ~ N(mu_c, sigma_c^2)``; shapes (n, D) and (n,)."""
        device = self.means.device if device is None else device
        u = torch.rand(n, generator=generator, device=device)
        cdf = self.weights.detach().to(device).cumsum(0)
        c = torch.searchsorted(cdf, u.to(cdf.dtype)).clamp_(max=self.components - 1)
        eps = torch.randn(n, self.dim, generator=generator, device=device)
        z = self.means[c] + torch.exp(0.5 * self.logvars[c]) * eps
        return z, c

    @torch.no_grad()
    def set_mixture_(self, weights: torch.Tensor, means: torch.Tensor, variances: torch.Tensor) -> None:
        """Set ``pi``, ``mu`` and ``sigma^2`` (e.g. a :class:`GaussianMixtureFit`'s), in place."""
        k, d = self.means.shape
        for name, value, shape in (("weights", weights, (k,)), ("means", means, (k, d)),
                                   ("variances", variances, (k, d))):
            if tuple(value.shape) != shape:
                raise ValueError(f"{name} must be shaped {shape}, got {tuple(value.shape)}")
            if not torch.isfinite(value).all():
                raise ValueError(f"{name} holds NaN or infinite values")
        if (weights <= 0).any() or (variances <= 0).any():
            raise ValueError("mixture weights and variances must be positive")
        self.logits.copy_(torch.log(weights / weights.sum()))
        self.means.copy_(means)
        self.logvars.copy_(torch.log(variances))


# ------------------------------------------------------------------------------------------
# Clustering: k-means and EM for a diagonal Gaussian mixture


@dataclasses.dataclass(frozen=True)
class KMeansFit:
    """``centers`` (k, D), ``labels`` (N,) int64, ``inertia``: the sum of squared distances to the centres."""

    centers: torch.Tensor
    labels: torch.Tensor
    inertia: float
    iterations: int


@dataclasses.dataclass(frozen=True)
class GaussianMixtureFit:
    """A fitted diagonal mixture: ``weights`` (k,), ``means`` and ``variances`` (k, D), and the mean
    per-point ``log_likelihood`` (nats) of the points it was fitted to."""

    weights: torch.Tensor
    means: torch.Tensor
    variances: torch.Tensor
    log_likelihood: float
    iterations: int
    converged: bool


def _points(points: torch.Tensor, k: int, what: str) -> torch.Tensor:
    if points.dim() != 2:
        raise ValueError(f"{what}: points must be shaped (N, D), got {tuple(points.shape)}")
    if k < 1:
        raise ValueError(f"{what}: k must be >= 1, got {k}")
    if len(points) < k:
        raise ValueError(f"{what}: cannot make {k} clusters from {len(points)} point(s); need at least {k}")
    points = points.detach().to(torch.float64)
    if not torch.isfinite(points).all():
        raise ValueError(f"{what}: points hold NaN or infinite values")
    return points


def squared_distances(points: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """``||x_i - c_j||^2``, shape (N, k), clamped at 0 against rounding."""
    return (points.pow(2).sum(1, keepdim=True) - 2 * points @ centers.T + centers.pow(2).sum(1)).clamp_(min=0)


def _kmeans_plus_plus(points: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii, 2007): each new centre drawn with probability ∝ D(x)^2."""
    n = len(points)
    chosen = [int(torch.randint(n, (1,), generator=generator, device=points.device))]
    nearest = squared_distances(points, points[chosen[0]:chosen[0] + 1])[:, 0]
    for _ in range(1, k):
        total = float(nearest.sum())
        probs = nearest / total if total > 0 else torch.full_like(nearest, 1.0 / n)
        index = int(torch.multinomial(probs, 1, generator=generator))
        chosen.append(index)
        nearest = torch.minimum(nearest, squared_distances(points, points[index:index + 1])[:, 0])
    return points[chosen].clone()


def _lloyd(points: torch.Tensor, centers: torch.Tensor, iterations: int) -> KMeansFit:
    k = len(centers)
    labels = None
    for step in range(1, iterations + 1):
        distances = squared_distances(points, centers)
        new = distances.argmin(1)
        if labels is not None and torch.equal(new, labels):
            break
        labels = new
        counts = torch.bincount(labels, minlength=k)
        sums = torch.zeros_like(centers).index_add_(0, labels, points)
        centers = sums / counts.clamp(min=1).unsqueeze(1).to(points.dtype)
        for empty in torch.nonzero(counts == 0).flatten().tolist():
            # an empty cluster takes the point farthest from its current centre
            far = int(distances.gather(1, labels.unsqueeze(1)).argmax())
            centers[empty] = points[far]
            distances[far] = 0
    distances = squared_distances(points, centers)
    labels = distances.argmin(1)
    inertia = float(distances.gather(1, labels.unsqueeze(1)).sum())
    return KMeansFit(centers, labels, inertia, step)


def kmeans(points: torch.Tensor, k: int, *, restarts: int = 10, iterations: int = 300,
           generator: torch.Generator | None = None) -> KMeansFit:
    """Lloyd's k-means from ``restarts`` k-means++ seedings; the fit with the least inertia.

    Deterministic given ``generator`` (the global RNG when None). Works in float64; ``centers`` are float64.
    """
    points = _points(points, k, "kmeans")
    if restarts < 1 or iterations < 1:
        raise ValueError(f"kmeans: restarts and iterations must be >= 1, got {restarts} and {iterations}")
    best = None
    for _ in range(restarts):
        fit = _lloyd(points, _kmeans_plus_plus(points, k, generator), iterations)
        if best is None or fit.inertia < best.inertia:
            best = fit
    return best


def _diagonal_gaussian_log_prob(points: torch.Tensor, means: torch.Tensor, variances: torch.Tensor) -> torch.Tensor:
    """``log N(x_i; mu_c, diag(var_c))``, shape (N, k)."""
    precision = 1.0 / variances  # (k, D)
    quadratic = (points.pow(2) @ precision.T - 2 * points @ (means * precision).T
                 + (means.pow(2) * precision).sum(1))
    return -0.5 * (quadratic + variances.log().sum(1) + points.shape[1] * _LOG_2PI)


def fit_gaussian_mixture(points: torch.Tensor, k: int, *, restarts: int = 10, iterations: int = 300,
                         tol: float = 1e-6, min_variance: float = 1e-6,
                         generator: torch.Generator | None = None) -> GaussianMixtureFit:
    """EM for a ``k``-component mixture of diagonal Gaussians; the best of ``restarts`` runs by log-likelihood.

    Each run starts from a k-means partition (one k-means++ seeding, see :func:`kmeans`), then
    alternates E and M steps until the mean log-likelihood gains less than ``tol`` nats per point, or
    ``iterations`` steps. ``min_variance`` is added to every variance (a floor against collapse).
    Deterministic given ``generator`` (the global RNG when None). Returns float64 tensors.
    """
    points = _points(points, k, "fit_gaussian_mixture")
    if restarts < 1 or iterations < 1:
        raise ValueError(f"fit_gaussian_mixture: restarts and iterations must be >= 1, got {restarts} and {iterations}")
    n = len(points)
    best = None
    for _ in range(restarts):
        start = _lloyd(points, _kmeans_plus_plus(points, k, generator), 300)
        resp = torch.nn.functional.one_hot(start.labels, k).to(points.dtype)
        previous, converged = -math.inf, False
        for step in range(1, iterations + 1):
            # M step
            counts = resp.sum(0) + 10 * torch.finfo(points.dtype).tiny
            weights = counts / n
            means = (resp.T @ points) / counts.unsqueeze(1)
            variances = (resp.T @ points.pow(2)) / counts.unsqueeze(1) - means.pow(2)
            variances = variances.clamp(min=0) + min_variance
            # E step
            joint = weights.log() + _diagonal_gaussian_log_prob(points, means, variances)
            log_px = torch.logsumexp(joint, dim=1, keepdim=True)
            resp = (joint - log_px).exp()
            likelihood = float(log_px.mean())
            if likelihood - previous < tol:
                converged = True
                break
            previous = likelihood
        fit = GaussianMixtureFit(weights, means, variances, likelihood, step, converged)
        if best is None or fit.log_likelihood > best.log_likelihood:
            best = fit
    return best
