"""colorization-ae: greyscale in, colour out, through a small U-Net that predicts Lab chroma."""

import dataclasses

import torch
from torch import nn

import zoo
from zoo.components import DownBlock, UpBlock, gaussian_log_likelihood
from zoo.components.blocks import ACTIVATIONS, activation, divisible_side
from zoo.components.color import gray_lightness, lab_to_rgb, rgb_to_gray, rgb_to_lab
from zoo.config import ModelConfig
from zoo.model import Autoencoder
from zoo_plugins.pretrained import bundled_entries

PRETRAINED: dict[str, str] = {  # name -> sha256 of model.safetensors
    "colorization-ae-photos": "22ee75bc4ef8ad689df3967950e40d5371669773c8d75d82596c328a811f4347",
}
AB_SCALE = 100.0  # Lab a/b are predicted in units of 100, i.e. roughly [-1.1, 1.1]


@dataclasses.dataclass
class ColorizationAEConfig(ModelConfig):
    """``channels`` lists the widths of the U-Net's stride-2 stages; ``image_channels`` is the output's (RGB)."""

    image_channels: int = 3
    image_size: int = 32
    channels: tuple[int, ...] = (32, 64, 128)
    activation: str = "relu"

    def validate(self) -> None:
        self.require(self.image_channels == 3, "image_channels", "must be 3 (the output is RGB)")
        self.require_positive("image_size", "channels")
        self.require(len(self.channels) > 0, "channels", "needs at least one stage")
        self.require_choice("activation", ACTIVATIONS)
        self.require(divisible_side(self.image_size, len(self.channels)), "image_size",
                     f"must be divisible by 2**{len(self.channels)} (one halving per entry of channels)")


class ColorizationAE(Autoencoder):
    """Predicts the a/b chroma channels of CIE Lab from the lightness of a greyscale image.

    Why Lab a/b rather than RGB: the grey input already fixes the lightness, so
    the network only has to supply chroma, and its output keeps the input's
    exact luminance and detail instead of re-synthesising them. Predicting
    a = b = 0 reproduces the grey image itself, which makes the grey copy the
    model's starting point rather than something it has to learn to match.
    U-Net skip connections carry edges from the input to the output at every scale.
    """

    architecture = "colorization-ae"
    config_class = ColorizationAEConfig
    tasks = ("colorize",)

    def __init__(self, config: ColorizationAEConfig):
        super().__init__(config)
        chans, act = config.channels, config.activation
        self.down = nn.ModuleList(DownBlock(a, b, act) for a, b in zip((1, *chans), chans))
        up_widths = (*chans[-2::-1], chans[0])
        self.up = nn.ModuleList(UpBlock(a, b, act) for a, b in zip(chans[::-1], up_widths))
        merges = [nn.Sequential(nn.Conv2d(2 * c, c, 3, padding=1), activation(act)) for c in chans[-2::-1]]
        head = nn.Sequential(nn.Conv2d(chans[0] + 1, chans[0], 3, padding=1), activation(act), nn.Conv2d(chans[0], 2, 3, padding=1))
        self.merge = nn.ModuleList([*merges, head])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (1, self.config.image_size, self.config.image_size)

    @property
    def data_shape(self) -> tuple[int, int, int]:
        return (3, self.config.image_size, self.config.image_size)

    def predict_ab(self, lightness: torch.Tensor) -> torch.Tensor:
        """Lab lightness (N, 1, H, W) in [0, 100] -> a/b chroma in units of AB_SCALE."""
        h = lightness / 50.0 - 1.0
        skips = [h]
        for block in self.down:
            h = block(h)
            skips.append(h)
        skips.pop()
        for up, merge, skip in zip(self.up, self.merge, reversed(skips)):
            h = merge(torch.cat([up(h), skip], dim=1))
        return h

    def colorize(self, gray: torch.Tensor) -> torch.Tensor:
        """Greyscale images (N, 1, H, W) in [0, 1] -> RGB images (N, 3, H, W) in [0, 1]."""
        lightness = gray_lightness(gray)
        return lab_to_rgb(torch.cat([lightness, AB_SCALE * self.predict_ab(lightness)], dim=1))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Greyscale images -> colour: for this model reconstructing means colorizing."""
        return self.colorize(x)

    def loss(self, batch: torch.Tensor, step: int | None = None) -> dict[str, torch.Tensor]:
        target_ab = rgb_to_lab(batch)[:, 1:] / AB_SCALE
        predicted_ab = self.predict_ab(gray_lightness(rgb_to_gray(batch)))
        log_likelihood = gaussian_log_likelihood(predicted_ab, target_ab, sigma=1.0)
        return {"loss": -log_likelihood.mean(), "ab_mse": (predicted_ab - target_ab).pow(2).mean().detach()}


@zoo.hookimpl
def register_architectures(register):
    register(ColorizationAE)


@zoo.hookimpl
def register_models(register):
    for entry in bundled_entries(PRETRAINED):
        register(entry)
