"""MLP and convolutional encoder/decoder building blocks.

Convolutional blocks halve (DownBlock) or double (UpBlock) the spatial size with
4x4 kernels, stride 2 and padding 1, so an image side must be divisible by
``2 ** len(channels)``; configs validate that before any block is built.
"""

from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
    "tanh": nn.Tanh,
}

def activation(name: str) -> nn.Module:
    """A fresh activation module by name (one of ``ACTIVATIONS``)."""
    return ACTIVATIONS[name]()

class MLP(nn.Sequential):
    """Linear layers with an activation (and optional dropout) after every hidden layer."""

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        activation_name: str = "relu",
        dropout: float = 0.0,
    ):
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), activation(activation_name)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, out_features))
        super().__init__(*layers)

class DownBlock(nn.Sequential):
    """Stride-2 convolution that halves height and width, then an activation."""

    def __init__(self, in_channels: int, out_channels: int, activation_name: str = "relu"):
        super().__init__(nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1), activation(activation_name))

class UpBlock(nn.Sequential):
    """Stride-2 transposed convolution that doubles height and width, then an activation."""

    def __init__(self, in_channels: int, out_channels: int, activation_name: str = "relu"):
        super().__init__(
            nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1), activation(activation_name)
        )

class ConvEncoder(nn.Module):
    """Image (N, C, S, S) -> vector (N, out_features) through DownBlocks and a linear head."""

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        image_size: int,
        out_features: int,
        hidden: int = 0,
        activation_name: str = "relu",
    ):
        super().__init__()
        widths = [in_channels, *channels]
        self.features = nn.Sequential(*(DownBlock(a, b, activation_name) for a, b in zip(widths, widths[1:])))
        side = image_size // 2 ** len(channels)
        flat = channels[-1] * side * side
        head_hidden = [hidden] if hidden else []
        self.head = nn.Sequential(nn.Flatten(), MLP(flat, head_hidden, out_features, activation_name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

class ConvDecoder(nn.Module):
    """Vector (N, in_features) -> image logits (N, out_channels, S, S), mirroring ConvEncoder."""

    def __init__(
        self,
        in_features: int,
        channels: Sequence[int],
        out_channels: int,
        image_size: int,
        hidden: int = 0,
        activation_name: str = "relu",
    ):
        super().__init__()
        widths = list(reversed(channels))
        self.side = image_size // 2 ** len(channels)
        self.top_channels = widths[0]
        head_hidden = [hidden] if hidden else []
        self.head = nn.Sequential(
            MLP(in_features, head_hidden, widths[0] * self.side * self.side, activation_name),
            activation(activation_name),
        )
        ups = [UpBlock(a, b, activation_name) for a, b in zip(widths, widths[1:])]
        ups.append(nn.ConvTranspose2d(widths[-1], widths[-1], 4, stride=2, padding=1))
        self.features = nn.Sequential(*ups, activation(activation_name), nn.Conv2d(widths[-1], out_channels, 3, padding=1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.head(z).view(-1, self.top_channels, self.side, self.side)
        return self.features(h)

def divisible_side(image_size: int, levels: int) -> bool:
    """Whether an image side survives ``levels`` halvings exactly."""
    return levels >= 0 and image_size % 2**levels == 0 and image_size // 2**levels >= 1

def parameter_count(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)

