"""The variational autoencoder family: everything a VAE shares, so a VAE plugin only builds its networks."""

import dataclasses
import math

import torch

from zoo.components import (
    GaussianReparameterization,
    KLWarmup,
    bernoulli_log_likelihood,
    elbo,
    gaussian_log_likelihood,
    kl_standard_normal,
    log_normal_standard,
)
from zoo.components.reparameterize import log_normal_diagonal
from zoo.config import ModelConfig
from zoo.model import Autoencoder

LIKELIHOODS = ("bernoulli", "gaussian")


@dataclasses.dataclass
class VAEConfig(ModelConfig):
    """Fields every VAE has. ``observation_sigma`` is used by the Gaussian likelihood only."""

    image_channels: int = 1
    image_size: int = 28
    latent_dim: int = 20
    likelihood: str = "bernoulli"
    observation_sigma: float = 0.1
    beta: float = 1.0
    kl_warmup_steps: int = 0

    def validate(self) -> None:
        self.require_positive("image_channels", "image_size", "latent_dim", "observation_sigma")
        self.require_choice("likelihood", LIKELIHOODS)
        self.require(self.beta >= 0, "beta", "must be >= 0")
        self.require(self.kl_warmup_steps >= 0, "kl_warmup_steps", "must be >= 0")


class VariationalAutoencoder(Autoencoder):
    """A Gaussian-latent VAE with a standard normal prior.

    Subclasses implement ``posterior(x) -> (mu, logvar)`` and
    ``decoder_logits(z)``, which returns pre-sigmoid image values shaped like
    ``input_shape``: Bernoulli logits, or the Gaussian mean before the sigmoid.
    """

    tasks = ("reconstruct", "encode", "decode", "sample", "anomaly-score")

    def __init__(self, config: VAEConfig):
        super().__init__(config)
        self.reparameterize = GaussianReparameterization()
        self.kl_schedule = KLWarmup(config.beta, config.kl_warmup_steps)

    @property
    def dynamic_binarization(self) -> bool:  # type: ignore[override]
        """A Bernoulli likelihood models binary pixels, so train and evaluate on binarized images."""
        return self.config.likelihood == "bernoulli"

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def decoder_logits(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def log_likelihood(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x | z) per sample for the configured likelihood."""
        if self.config.likelihood == "bernoulli":
            return bernoulli_log_likelihood(logits, x)
        return gaussian_log_likelihood(torch.sigmoid(logits), x, self.config.observation_sigma)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.posterior(x)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder_logits(z))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.reparameterize(*self.posterior(x)))

    def loss(self, batch: torch.Tensor, step: int | None = None) -> dict[str, torch.Tensor]:
        mu, logvar = self.posterior(batch)
        z = self.reparameterize(mu, logvar, sample=True)
        terms = elbo(self.log_likelihood(self.decoder_logits(z), batch), kl_standard_normal(mu, logvar), self.kl_schedule(step))
        return terms.as_dict()

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        z = torch.randn(n, self.config.latent_dim, generator=generator, device=self.device)
        return self.decode(z)

    def anomaly_score(self, x: torch.Tensor) -> torch.Tensor:
        """Negative ELBO per image at the posterior mean, in nats.

        The per-pixel terms are summed in float64: a score of a few hundred nats summed in
        float32 is only good to about 1e-4, and then depends on the order of summation (so
        on the batch size, the device and the runtime, e.g. an exported ONNX graph).
        """
        mu, logvar = self.posterior(x)
        logits, x, mu, logvar = (t.double() for t in (self.decoder_logits(mu), x, mu, logvar))
        return (kl_standard_normal(mu, logvar) - self.log_likelihood(logits, x)).float()

    @torch.no_grad()
    def importance_weighted_log_likelihood(
        self, x: torch.Tensor, k: int, generator: torch.Generator | None = None, chunk: int = 100
    ) -> torch.Tensor:
        """The IWAE lower bound on log p(x) per image, with ``k`` importance samples.

        Samples are drawn in chunks of ``chunk`` so memory stays bounded for large k.
        """
        mu, logvar = self.posterior(x)
        log_weights = []
        for start in range(0, k, chunk):
            size = min(chunk, k - start)
            eps = torch.randn((size, *mu.shape), generator=generator, device=mu.device, dtype=mu.dtype)
            z = mu + torch.exp(0.5 * logvar) * eps  # (size, N, latent)
            logits = self.decoder_logits(z.reshape(-1, mu.shape[-1]))
            targets = x.unsqueeze(0).expand(size, *x.shape).reshape(-1, *x.shape[1:])
            log_px_z = self.log_likelihood(logits, targets).view(size, -1)
            log_weights.append(log_px_z + log_normal_standard(z) - log_normal_diagonal(z, mu, logvar))
        return torch.logsumexp(torch.cat(log_weights), dim=0) - math.log(k)
