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

    # Training hooks (called by zoo.training.Trainer) ----------------------------

    def configure_optimizer(self, config: Any) -> torch.optim.Optimizer:
        """The optimizer the trainer steps; called once per ``fit()``, on every rank.

        ``config`` is the run's :class:`zoo.training.TrainConfig` (``lr``, ``weight_decay``, ...).
        The default is Adam over all parameters with ``config.lr`` and ``config.weight_decay``.
        Override it to return any ``torch.optim.Optimizer`` over this model's parameters, e.g.
        with parameter groups at different learning rates. It is called after the model has
        been moved to the training device and before a resumed run restores the optimizer's
        state, so it must build the same optimizer (class, groups, group order) every time.

        The trainer owns the learning-rate schedule: before every step it sets each group's
        ``lr`` to the ``lr`` that group had here times the schedule's factor (1 for
        ``constant``), so the groups' ratios are kept. Parameters left out are not updated.
        """
        return torch.optim.Adam(self.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    def on_train_step_end(self, step: int, terms: dict[str, float]) -> None:
        """Per-step model logic after each optimizer step, e.g. resetting dead codebook entries.

        ``step`` is 1-based: the number of optimizer steps taken so far, i.e. the ``step`` that
        ``loss`` got for this batch plus one. ``terms`` are this step's loss terms as Python
        floats (the values the progress bar averages, computed before the update, on this
        rank's share of the batch). The model is in training mode and the call runs under
        ``torch.no_grad()``. Changes made here (weights, buffers) are in the checkpoint that
        follows, so resume replays them exactly.

        Randomness: use the torch global RNG (``torch.rand``, ``torch.randn``, ``torch.randint``
        without a ``generator``, on CPU or the model's device), never a generator of your own.
        The trainer seeds it for this call from (training seed, ``step``), identically on every
        rank, and restores the training RNG afterwards, so random draws here are reproducible,
        survive resume bit-exactly and do not shift the training randomness.

        Under DDP this is called on every rank. DDP keeps parameters in step only through the
        gradients, so any change to parameters must come out identical on every rank: base it
        on values that already are (the weights, the global RNG) or synchronise rank-local
        statistics (``terms``, per-batch usage counts) yourself, e.g. with
        ``torch.distributed.all_reduce`` when ``torch.distributed.is_initialized()``.
        The default does nothing.
        """

    def on_train_epoch_end(self, epoch: int) -> None:
        """Per-epoch model logic, called after an epoch's last optimizer step.

        ``epoch`` is 1-based: the number of epochs completed. It runs after that step's
        :meth:`on_train_step_end`, before the epoch's validation and checkpoint (so both see its
        changes), in training mode, under ``torch.no_grad()``, on every rank, with the global
        RNG seeded from (training seed, ``epoch``) as in :meth:`on_train_step_end`, whose DDP
        rules apply too. A run resumed from a checkpoint saved mid-epoch calls it when it
        finishes that epoch. The default does nothing.
        """

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
