"""denoising-ae: a deterministic convolutional autoencoder trained to undo a corruption."""

import dataclasses

import torch

import zoo
from zoo.components import ConvDecoder, ConvEncoder, bernoulli_log_likelihood, gaussian_log_likelihood
from zoo.components.blocks import ACTIVATIONS, divisible_side
from zoo.components.corruption import CORRUPTIONS, corrupt
from zoo.config import ModelConfig
from zoo.model import Autoencoder
from zoo_plugins.pretrained import bundled_entries

PRETRAINED: dict[str, str] = {  # name -> sha256 of model.safetensors
    "denoising-ae-mnist": "32817421af75e34d2a256202ac38444a171c569bc171a0b7fc77fa5122845265",
}


@dataclasses.dataclass
class DenoisingAEConfig(ModelConfig):
    """The corruption (``noise``, ``noise_level``, ``clip``) is part of the model: its loss applies it.

    ``noise_level`` is the Gaussian sigma, or the fraction of pixels hit for
    salt-and-pepper and masking. ``reconstruction`` picks the per-pixel loss
    against the clean image: Bernoulli cross-entropy or Gaussian (MSE).
    """

    image_channels: int = 1
    image_size: int = 28
    latent_dim: int = 64
    channels: tuple[int, ...] = (32, 64)
    hidden: int = 256
    activation: str = "relu"
    noise: str = "gaussian"
    noise_level: float = 0.5
    clip: bool = True
    reconstruction: str = "bernoulli"

    def validate(self) -> None:
        self.require_positive("image_channels", "image_size", "latent_dim", "channels")
        self.require(self.hidden >= 0, "hidden", "must be >= 0 (0 means no hidden layer)")
        self.require_choice("activation", ACTIVATIONS)
        self.require_choice("noise", CORRUPTIONS)
        self.require_choice("reconstruction", ("bernoulli", "gaussian"))
        self.require(self.noise_level >= 0, "noise_level", "must be >= 0")
        if self.noise != "gaussian":
            self.require_range("noise_level", 0.0, 1.0)
        self.require(divisible_side(self.image_size, len(self.channels)), "image_size",
                     f"must be divisible by 2**{len(self.channels)} (one halving per entry of channels)")


class DenoisingAE(Autoencoder):
    """Denoising autoencoder (Vincent et al., 2008): corrupted image in, clean image out."""

    architecture = "denoising-ae"
    config_class = DenoisingAEConfig
    tasks = ("denoise", "reconstruct", "encode", "decode", "anomaly-score")

    def __init__(self, config: DenoisingAEConfig):
        super().__init__(config)
        c = config
        self.encoder = ConvEncoder(c.image_channels, c.channels, c.image_size, c.latent_dim, c.hidden, c.activation)
        self.decoder = ConvDecoder(c.latent_dim, c.channels, c.image_channels, c.image_size, c.hidden, c.activation)

    def corrupt(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Apply the configured corruption, as training does."""
        return corrupt(x, self.config.noise, self.config.noise_level, self.config.clip, generator)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(z))

    def denoise(self, x: torch.Tensor) -> torch.Tensor:
        """Corrupted images -> clean estimates in [0, 1]."""
        return self.reconstruct(x)

    def loss(self, batch: torch.Tensor, step: int | None = None) -> dict[str, torch.Tensor]:
        logits = self.decoder(self.encoder(self.corrupt(batch)))
        if self.config.reconstruction == "bernoulli":
            log_likelihood = bernoulli_log_likelihood(logits, batch)
        else:
            log_likelihood = gaussian_log_likelihood(torch.sigmoid(logits), batch)
        mse = (torch.sigmoid(logits) - batch).pow(2).mean()
        return {"loss": -log_likelihood.mean(), "mse": mse.detach()}

    def anomaly_score(self, x: torch.Tensor) -> torch.Tensor:
        """Mean squared reconstruction error per image."""
        return (self.reconstruct(x) - x).pow(2).flatten(1).mean(1)


@zoo.hookimpl
def register_architectures(register):
    register(DenoisingAE)


@zoo.hookimpl
def register_models(register):
    for entry in bundled_entries(PRETRAINED):
        register(entry)
