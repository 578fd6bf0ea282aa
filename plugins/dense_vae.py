"""dense-vae: a VAE whose encoder and decoder are multilayer perceptrons."""

import dataclasses

import torch

import zoo
from zoo.components import MLP
from zoo.components.blocks import ACTIVATIONS
from zoo.vae import VAEConfig, VariationalAutoencoder
from zoo_plugins.pretrained import bundled_entries

PRETRAINED: dict[str, str] = {  # name -> sha256 of model.safetensors
    "dense-vae-mnist": "e6628a93dca2a59f0456f1b846e6242ca1eb0b9e3760053427f96938d7d49342",
    "dense-vae-mnist-784-400-20": "aee15b65a6785109ce3845ce17e0cc6e5681324beb54c3af6b2cca446e024ebe",
    "dense-vae-mnist-2d": "61159208b2369c3caf78a54dc277f7e2f45527b6c50607712b9c25264912d7eb",
}


@dataclasses.dataclass
class DenseVAEConfig(VAEConfig):
    """``hidden`` lists the encoder's hidden widths; the decoder mirrors them."""

    hidden: tuple[int, ...] = (400,)
    activation: str = "relu"
    dropout: float = 0.0

    def validate(self) -> None:
        super().validate()
        self.require(len(self.hidden) > 0, "hidden", "needs at least one hidden layer")
        self.require_positive("hidden")
        self.require_choice("activation", ACTIVATIONS)
        self.require_range("dropout", 0.0, 1.0, high_inclusive=False)


class DenseVAE(VariationalAutoencoder):
    """Fully connected VAE (Kingma & Welling, 2014) on flattened images."""

    architecture = "dense-vae"
    config_class = DenseVAEConfig
    presets = {
        "784-400-20": {"hidden": [400], "latent_dim": 20, "activation": "relu", "dropout": 0.0},
        "784-500-500-50": {"hidden": [500, 500], "latent_dim": 50, "activation": "elu", "dropout": 0.1},
        "784-500-500-2": {"hidden": [500, 500], "latent_dim": 2, "activation": "elu", "dropout": 0.0},
    }

    def __init__(self, config: DenseVAEConfig):
        super().__init__(config)
        features = config.image_channels * config.image_size**2
        self.encoder = MLP(features, config.hidden, 2 * config.latent_dim, config.activation, config.dropout)
        self.decoder = MLP(config.latent_dim, tuple(reversed(config.hidden)), features, config.activation, config.dropout)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x.flatten(1)).chunk(2, dim=-1)

    def decoder_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).view(-1, *self.input_shape)


@zoo.hookimpl
def register_architectures(register):
    register(DenseVAE)


@zoo.hookimpl
def register_models(register):
    for entry in bundled_entries(PRETRAINED):
        register(entry)
