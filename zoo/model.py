"""The one base class every zoo model derives from."""

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from zoo.config import ModelConfig
from zoo.errors import UnsupportedTaskError
from zoo.tasks import TASKS, Task


class Autoencoder(nn.Module):
    """Base class of zoo models.

    Subclasses set three class attributes and implement the methods of the
    tasks they declare:

    - ``architecture``: the registered name, e.g. ``"conv-vae"``.
    - ``config_class``: a :class:`zoo.config.ModelConfig` dataclass. The model
      is built from it alone, so ``config.json`` is enough to rebuild it.
    - ``tasks``: task names from :data:`zoo.tasks.TASKS`; the first is the default.

    All images are float tensors in [0, 1] shaped (N, C, H, W). ``loss(batch)``
    takes a batch of clean training images and returns named terms including
    ``"loss"``; anything the objective needs (sampling, corruption, colour
    conversion) happens inside it.
    """

    architecture: ClassVar[str]
    config_class: ClassVar[type[ModelConfig]]
    tasks: ClassVar[tuple[str, ...]]
    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    #: Whether training and likelihood evaluation should see dynamically binarized
    #: data (every pixel redrawn as Bernoulli(intensity) per batch). The trainer and
    #: ``zoo eval`` read this declaration instead of guessing from the architecture.
    dynamic_binarization: ClassVar[bool] = False

    def __init__(self, config: ModelConfig):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} expects a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config

    # Shapes --------------------------------------------------------------

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images that image-input tasks take."""
        return (self.config.image_channels, self.config.image_size, self.config.image_size)

    @property
    def data_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the training images ``loss`` takes; defaults to ``input_shape``."""
        return self.input_shape

    @property
    def latent_dim(self) -> int | None:
        """Length of a latent vector, or None for models without a decodable latent."""
        return getattr(self.config, "latent_dim", None)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # The interface ---------------------------------------------------------

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> latent codes (N, latent_dim)."""
        raise UnsupportedTaskError(self._missing("encode"))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent codes -> images in [0, 1]."""
        raise UnsupportedTaskError(self._missing("decode"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model's default mapping of an input batch; returns images in [0, 1]."""
        return self.reconstruct(x)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> their reconstructions in [0, 1]."""
        return self.decode(self.encode(x))

    def loss(self, batch: torch.Tensor, step: int | None = None) -> dict[str, torch.Tensor]:
        """Training objective on clean images; ``step`` drives schedules such as KL warm-up."""
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` images from the model (generative models only)."""
        raise UnsupportedTaskError(self._missing("sample"))

    # Task dispatch -----------------------------------------------------------

    @classmethod
    def task(cls, name: str) -> Task:
        """The declared task ``name``; an undeclared one raises UnsupportedTaskError listing the rest."""
        if name not in cls.tasks:
            raise UnsupportedTaskError(
                f"{cls.architecture!r} does not support task {name!r}; it supports: {', '.join(cls.tasks)}"
            )
        return TASKS[name]

    @property
    def default_task(self) -> str:
        return self.tasks[0]

    @torch.no_grad()
    def run_task(self, name: str, inputs: Any, generator: torch.Generator | None = None) -> torch.Tensor:
        """Run a declared task on a prepared input (image batch, latent batch or a count)."""
        method = getattr(self, self.task(name).method)
        if self.task(name).input == "count":
            return method(int(inputs), generator=generator)
        return method(inputs)

    # Checkpoints -------------------------------------------------------------

    def save_pretrained(self, directory: str | Path, metadata: dict[str, str] | None = None) -> Path:
        """Write ``model.safetensors`` and ``config.json`` into ``directory``."""
        from zoo.checkpoint import save_checkpoint

        return save_checkpoint(self, directory, metadata=metadata)

    def _missing(self, method: str) -> str:
        return f"{self.architecture!r} has no {method}(); it supports: {', '.join(self.tasks)}"
