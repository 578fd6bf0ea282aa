"""Fast, deterministic mini-batches from in-memory uint8 images, with optional sharding."""

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import TensorDataset


class Batches:
    """Iterate ``(x, y)`` batches: ``x`` float32 in [0, 1] (N, C, H, W), ``y`` int64 labels.

    Batches are gathered by indexing the uint8 tensor and converted per batch; there is no
    per-sample transform. The order depends only on ``seed`` and the epoch set with
    :meth:`set_epoch`, so a run can be reproduced or resumed. With ``dynamic_binarize`` every
    pixel is redrawn as Bernoulli(intensity) in every batch, also from a seeded generator.

    Sharding follows ``DistributedSampler``: all ranks share the epoch's permutation, which
    is padded by wrapping around to a multiple of ``world_size``, and rank ``r`` takes every
    ``world_size``-th index from ``r``, so every rank gets the same number of batches.
    ``rank``/``world_size`` default to torch.distributed's when it is initialised.

    Use it like a DataLoader::

        loader = Batches(zoo.data.load("mnist"), batch_size=128, seed=0)
        for epoch in range(epochs):
            loader.set_epoch(epoch)
            for x, y in loader:
                ...
    """

    def __init__(self, data: TensorDataset, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, dynamic_binarize: bool = False, rank: int | None = None,
                 world_size: int | None = None, device: torch.device | str | None = None):
        images, labels = data.tensors[:2]
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if len(images) == 0:
            raise ValueError("cannot batch an empty dataset")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        rank, world_size = _default_shard(rank, world_size)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.images, self.labels = images, labels
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.dynamic_binarize = dynamic_binarize
        self.rank, self.world_size = rank, world_size
        self.device = device
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order (and binarization noise) the next iteration uses."""
        self.epoch = epoch

    def indices(self) -> torch.Tensor:
        """This rank's sample indices for the current epoch, in the order they are served."""
        n = len(self.images)
        if self.shuffle:
            order = torch.randperm(n, generator=self._generator(0))
        else:
            order = torch.arange(n)
        total = _ceil_div(n, self.world_size) * self.world_size
        padded = order.repeat(_ceil_div(total, n))[:total]
        return padded[self.rank :: self.world_size]

    def __len__(self) -> int:
        per_rank = _ceil_div(len(self.images), self.world_size)
        return per_rank // self.batch_size if self.drop_last else _ceil_div(per_rank, self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        indices = self.indices()
        noise = self._generator(1 + self.rank) if self.dynamic_binarize else None
        for b in range(len(self)):
            batch = indices[b * self.batch_size : (b + 1) * self.batch_size]
            x = self.images[batch].float().div_(255)
            if noise is not None:
                x = torch.bernoulli(x, generator=noise)
            y = self.labels[batch]
            if self.device is not None:
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            yield x, y

    def _generator(self, stream: int) -> torch.Generator:
        """A CPU generator determined by (seed, epoch, stream): stream 0 orders, 1 + rank binarizes."""
        seed = np.random.SeedSequence([self.seed, self.epoch, stream]).generate_state(1, np.uint64)[0]
        return torch.Generator().manual_seed(int(seed))


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _default_shard(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Fill in rank and world size from torch.distributed when it is initialised, else 0 and 1."""
    initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
    if rank is None:
        rank = torch.distributed.get_rank() if initialised else 0
    if world_size is None:
        world_size = torch.distributed.get_world_size() if initialised else 1
    return rank, world_size
