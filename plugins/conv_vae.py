"""conv-vae: a VAE with a convolutional encoder and a transposed-convolution decoder."""

import dataclasses

import torch

import zoo
from zoo.components import ConvDecoder, ConvEncoder
from zoo.components.blocks import ACTIVATIONS, divisible_side
from zoo.vae import VAEConfig, VariationalAutoencoder
from zoo_plugins.pretrained import bundled_entries

PRETRAINED: dict[str, str] = {  # name -> sha256 of model.safetensors
    "conv-vae-mnist": "531757bd5acd1807ed3fc20831156e65e1a84b84f46724439caca70fb812e33b",
}


@dataclasses.dataclass
class ConvVAEConfig(VAEConfig):
    """``channels`` lists the widths of the stride-2 stages (each halves the image side)."""

    latent_dim: int = 32
    channels: tuple[int, ...] = (32, 64)
    hidden: int = 256
    activation: str = "relu"

    def validate(self) -> None:
        super().validate()
        self.require(len(self.channels) > 0, "channels", "needs at least one stage")
        self.require_positive("channels")
        self.require(self.hidden >= 0, "hidden", "must be >= 0 (0 means no hidden layer)")
        self.require_choice("activation", ACTIVATIONS)
        self.require(divisible_side(self.image_size, len(self.channels)), "image_size",
                     f"must be divisible by 2**{len(self.channels)} (one halving per entry of channels)")


class ConvVAE(VariationalAutoencoder):
    """Convolutional VAE for small images, e.g. 1x28x28 digits or 3x32x32 photos."""

    architecture = "conv-vae"
    config_class = ConvVAEConfig
    presets = {
        "mnist": {"image_channels": 1, "image_size": 28, "channels": [32, 64], "latent_dim": 32},
        "rgb-32": {"image_channels": 3, "image_size": 32, "channels": [32, 64, 128], "latent_dim": 64,
                   "likelihood": "gaussian"},
    }

    def __init__(self, config: ConvVAEConfig):
        super().__init__(config)
        c = config
        self.encoder = ConvEncoder(c.image_channels, c.channels, c.image_size, 2 * c.latent_dim, c.hidden, c.activation)
        self.decoder = ConvDecoder(c.latent_dim, c.channels, c.image_channels, c.image_size, c.hidden, c.activation)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x).chunk(2, dim=-1)

    def decoder_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)


@zoo.hookimpl
def register_architectures(register):
    register(ConvVAE)


@zoo.hookimpl
def register_models(register):
    for entry in bundled_entries(PRETRAINED):
        register(entry)
