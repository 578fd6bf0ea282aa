"""beta-vae: an example third-party ae-zoo plugin.

A beta-VAE with Burgess et al.'s (2018) capacity objective,
``-E[log p(x|z)] + gamma * |KL - C|``, where the target capacity ``C`` grows
linearly from 0 to ``capacity`` nats over ``capacity_steps`` optimiser steps.
It reuses ae-zoo's shared VAE machinery and building blocks; only the loss
differs, and nothing in ae-zoo itself knows about it.
"""

import dataclasses

import torch

import zoo
from zoo.components import MLP, kl_standard_normal
from zoo.vae import VAEConfig, VariationalAutoencoder


@dataclasses.dataclass
class BetaVAEConfig(VAEConfig):
    hidden: tuple[int, ...] = (256,)
    latent_dim: int = 10
    gamma: float = 100.0
    capacity: float = 25.0
    capacity_steps: int = 10000

    def validate(self) -> None:
        super().validate()
        self.require_positive("hidden", "gamma")
        self.require(self.capacity >= 0, "capacity", "must be >= 0")
        self.require(self.capacity_steps >= 0, "capacity_steps", "must be >= 0")


class BetaVAE(VariationalAutoencoder):
    """MLP beta-VAE with an annealed KL capacity target."""

    architecture = "beta-vae"
    config_class = BetaVAEConfig

    def __init__(self, config: BetaVAEConfig):
        super().__init__(config)
        features = config.image_channels * config.image_size**2
        self.encoder = MLP(features, config.hidden, 2 * config.latent_dim)
        self.decoder = MLP(config.latent_dim, tuple(reversed(config.hidden)), features)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x.flatten(1)).chunk(2, dim=-1)

    def decoder_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).view(-1, *self.input_shape)

    def capacity_at(self, step: int | None) -> float:
        c = self.config
        if step is None or c.capacity_steps == 0:
            return c.capacity
        return c.capacity * min(1.0, step / c.capacity_steps)

    def loss(self, batch: torch.Tensor, step: int | None = None) -> dict[str, torch.Tensor]:
        mu, logvar = self.posterior(batch)
        z = self.reparameterize(mu, logvar, sample=True)
        reconstruction = -self.log_likelihood(self.decoder_logits(z), batch).mean()
        kl = kl_standard_normal(mu, logvar).mean()
        loss = reconstruction + self.config.gamma * (kl - self.capacity_at(step)).abs()
        return {"loss": loss, "reconstruction": reconstruction, "kl": kl}


@zoo.hookimpl
def register_architectures(register):
    register(BetaVAE)
