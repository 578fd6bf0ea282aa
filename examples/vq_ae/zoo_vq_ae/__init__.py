"""vq-ae: an example third-party ae-zoo plugin whose latent is a grid of discrete codes.

A vector-quantized autoencoder (van den Oord et al., 2017): a convolutional encoder maps an
image to a grid of vectors, each vector is replaced by its nearest entry of a learned codebook,
and a convolutional decoder maps the quantized grid back to an image. Gradients pass the
quantization straight through. It is not a VAE: it has no prior to sample from, so it declares
reconstruct, encode, decode and anomaly-score, not sample.

What it shows a plugin author:

- **A latent that is not a vector.** ``encode`` returns the code indices of the grid, flattened
  row by row to ``(N, H' * W')`` floats, and ``latent_dim`` is overridden to ``H' * W'`` so the
  server and the conformance kit know what ``decode`` takes. ``decode`` rounds and clamps.
- **Trainer hooks.** ``configure_optimizer`` gives the codebook its own learning rate;
  ``on_train_step_end`` re-initialises codebook entries unused for ``dead_code_steps`` steps.
- **Its own metrics.** ``register_metrics`` adds a ``codebook`` metric set (perplexity and the
  share of codes in use) that ``zoo eval`` runs next to the default reconstruction metrics.
"""

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

import zoo
from zoo import ModelConfig
from zoo.components import DownBlock, UpBlock, bernoulli_log_likelihood
from zoo.components.blocks import ACTIVATIONS, activation, divisible_side
from zoo.metrics import Metric, MetricSet


@dataclasses.dataclass
class VQAEConfig(ModelConfig):
    """``channels`` lists the encoder's stride-2 stages; a 28x28 image with two stages gives a 7x7 grid."""

    image_channels: int = 1
    image_size: int = 28
    channels: tuple[int, ...] = (32, 64)
    embedding_dim: int = 16
    codebook_size: int = 64
    commitment: float = 0.25
    codebook_lr_scale: float = 1.0
    dead_code_steps: int = 200
    activation: str = "relu"

    def validate(self) -> None:
        self.require_positive("image_channels", "image_size", "channels", "embedding_dim", "codebook_size",
                              "codebook_lr_scale")
        self.require(len(self.channels) > 0, "channels", "needs at least one stage")
        self.require(self.commitment >= 0, "commitment", "must be >= 0")
        self.require(self.dead_code_steps >= 0, "dead_code_steps", "must be >= 0 (0 never resets codes)")
        self.require_choice("activation", ACTIVATIONS)
        self.require(divisible_side(self.image_size, len(self.channels)), "image_size",
                     f"must be divisible by 2**{len(self.channels)} (one halving per entry of channels)")


class VQAE(zoo.Autoencoder):
    """Vector-quantized autoencoder with a straight-through estimator and dead-code resets."""

    architecture = "vq-ae"
    config_class = VQAEConfig
    tasks = ("reconstruct", "encode", "decode", "anomaly-score")
    presets = {"mnist": {"channels": [32, 64], "embedding_dim": 16, "codebook_size": 64}}

    def __init__(self, config: VQAEConfig):
        super().__init__(config)
        c = config
        widths = (c.image_channels, *c.channels)
        self.encoder = nn.Sequential(*(DownBlock(a, b, c.activation) for a, b in zip(widths, widths[1:])),
                                     nn.Conv2d(c.channels[-1], c.embedding_dim, 1))
        self.codebook = nn.Parameter(torch.randn(c.codebook_size, c.embedding_dim) / math.sqrt(c.embedding_dim))
        ups = [UpBlock(b, a, c.activation) for a, b in zip(widths[1:-1], widths[2:])][::-1]
        self.decoder = nn.Sequential(nn.Conv2d(c.embedding_dim, c.channels[-1], 1), activation(c.activation), *ups,
                                     nn.ConvTranspose2d(c.channels[0], c.image_channels, 4, stride=2, padding=1))
        # Steps since each code was last chosen: saved with the weights, so resume keeps counting.
        self.register_buffer("steps_unused", torch.zeros(c.codebook_size, dtype=torch.long))
        self._used: torch.Tensor | None = None

    @property
    def grid(self) -> tuple[int, int]:
        side = self.config.image_size // 2 ** len(self.config.channels)
        return side, side

    @property
    def latent_dim(self) -> int:
        """One code index per grid position: what ``encode`` returns and ``decode`` takes."""
        return self.grid[0] * self.grid[1]

    # Quantization ----------------------------------------------------------------------------

    def nearest_codes(self, z_e: torch.Tensor) -> torch.Tensor:
        """(N, D, H', W') encoder outputs -> (N, H', W') indices of the nearest codebook entries."""
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, z_e.shape[1])
        distances = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.codebook.t()
                     + self.codebook.pow(2).sum(1))
        return distances.argmin(1).view(z_e.shape[0], *z_e.shape[2:])

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """(N, H', W') code indices -> (N, D, H', W') codebook vectors."""
        return self.codebook[codes].permute(0, 3, 1, 2)

    # Tasks ------------------------------------------------------------------------------------

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> code indices, (N, H' * W') as floats (the grid flattened row by row)."""
        return self.nearest_codes(self.encoder(x)).flatten(1).float()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Code indices (N, H' * W'), rounded and clamped to the codebook -> images in [0, 1]."""
        codes = z.round().clamp(0, self.config.codebook_size - 1).long().view(-1, *self.grid)
        return torch.sigmoid(self.decoder(self.embed(codes)))

    def anomaly_score(self, x: torch.Tensor) -> torch.Tensor:
        """Mean squared reconstruction error per image."""
        return (self.reconstruct(x) - x).pow(2).flatten(1).mean(1)

    # Training ---------------------------------------------------------------------------------

    def loss(self, batch: torch.Tensor, step: int | None = None) -> dict[str, torch.Tensor]:
        z_e = self.encoder(batch)
        codes = self.nearest_codes(z_e)
        z_q = self.embed(codes)
        codebook = F.mse_loss(z_q, z_e.detach())
        commitment = F.mse_loss(z_e, z_q.detach())
        logits = self.decoder(z_e + (z_q - z_e).detach())  # straight-through: decoder gradients reach the encoder
        reconstruction = -bernoulli_log_likelihood(logits, batch).mean()
        if self.training:
            self._used = codes.flatten()
        counts = torch.bincount(codes.flatten(), minlength=self.config.codebook_size).float()
        probabilities = counts / counts.sum()
        perplexity = torch.exp(-(probabilities * probabilities.clamp(min=1e-12).log()).sum())
        return {"loss": reconstruction + codebook + self.config.commitment * commitment,
                "reconstruction": reconstruction, "codebook": codebook, "commitment": commitment,
                "perplexity": perplexity.detach()}

    def configure_optimizer(self, config) -> torch.optim.Optimizer:
        """Adam, with the codebook at ``codebook_lr_scale`` times the network's learning rate."""
        network = [p for name, p in self.named_parameters() if name != "codebook"]
        return torch.optim.Adam([{"params": network, "lr": config.lr},
                                 {"params": [self.codebook], "lr": config.lr * self.config.codebook_lr_scale}],
                                weight_decay=config.weight_decay)

    def on_train_step_end(self, step: int, terms: dict[str, float]) -> None:
        """Move codes unused for ``dead_code_steps`` steps next to randomly chosen codes in use.

        The usage counts are summed over ranks under DDP and the choice uses the global RNG, which
        the trainer seeds identically on every rank, so every rank makes the same reset.
        """
        if self._used is None or self.config.dead_code_steps == 0:
            return
        used = torch.bincount(self._used, minlength=self.config.codebook_size)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(used)
        self._used = None
        self.steps_unused.add_(1).masked_fill_(used > 0, 0)
        dead = (self.steps_unused >= self.config.dead_code_steps).nonzero().flatten()
        alive = (self.steps_unused == 0).nonzero().flatten()
        if len(dead) == 0 or len(alive) == 0:
            return
        donors = alive[torch.randint(len(alive), (len(dead),), device=alive.device)]
        noise = torch.randn(len(dead), self.config.embedding_dim, device=self.codebook.device) * 0.01
        self.codebook[dead] = self.codebook[donors] + noise
        self.steps_unused[dead] = 0


@torch.no_grad()
def codebook_usage(model: VQAE, images: torch.Tensor, *, batch_size: int, device, **_) -> dict[str, float]:
    """Perplexity of the code distribution over the whole test set, and the share of codes used."""
    counts = torch.zeros(model.config.codebook_size, dtype=torch.float64)
    for start in range(0, len(images), batch_size):
        codes = model.encode(images[start:start + batch_size].to(device)).long().flatten().cpu()
        counts += torch.bincount(codes, minlength=model.config.codebook_size).double()
    probabilities = counts / counts.sum()
    entropy = -(probabilities * probabilities.clamp(min=1e-300).log()).sum()
    return {"codebook_perplexity": float(entropy.exp()),
            "codebook_used_fraction": float((counts > 0).double().mean())}


CODEBOOK_METRICS = MetricSet(
    name="codebook",
    metrics={"codebook_perplexity": Metric("perplexity of the test set's code distribution (max: codebook size)",
                                           "", True),
             "codebook_used_fraction": Metric("share of codebook entries chosen at least once on the test set",
                                              "", True)},
    headline="codebook_perplexity",
    headline_name="codebook perplexity",
    applies=lambda model: isinstance(model, VQAE),
    requires="a vq-ae model (its codebook)",
    run=codebook_usage,
    task_type="image-feature-extraction",
    task_name="Discrete image codes",
    note="Codebook figures say how much of the codebook the test set uses, not how good the images are.",
)


@zoo.hookimpl
def register_architectures(register):
    register(VQAE)


@zoo.hookimpl
def register_metrics(register):
    register(CODEBOOK_METRICS)
