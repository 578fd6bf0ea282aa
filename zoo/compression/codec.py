"""A model as an image codec: encode + quantize into ``.zae`` bytes, and back with decode.

Any model declaring the ``encode`` and ``decode`` tasks works; one with a ``posterior``
method also gets posterior-guided rate control (see :mod:`zoo.compression.quantize`).
"""

from pathlib import Path

import torch

from zoo.checkpoint import WEIGHTS_NAME, sha256_file
from zoo.compression.errors import ModelMismatchError
from zoo.compression.format import CompressedImage, pack, unpack
from zoo.compression.quantize import dequantize, quantize
from zoo.errors import UnsupportedTaskError
from zoo.model import Autoencoder

REQUIRED_TASKS = ("encode", "decode")
DEFAULT_INACTIVE_STD = 0.9
BATCH = 256


def weights_sha256(name: str | Path) -> str:
    """sha256 of the ``model.safetensors`` that ``zoo.load(name)`` reads."""
    from zoo.api import checkpoint_folder

    return sha256_file(checkpoint_folder(name) / WEIGHTS_NAME)


class Codec:
    """Compresses image batches shaped like ``model.input_shape`` and restores them."""

    def __init__(self, model: Autoencoder, name: str, sha256: str):
        missing = [task for task in REQUIRED_TASKS if task not in model.tasks]
        if missing or model.latent_dim is None:
            raise UnsupportedTaskError(f"model {name!r} cannot compress images: it does not declare the "
                                       f"{' and '.join(missing or REQUIRED_TASKS)} task(s); it declares {', '.join(model.tasks)}")
        self.model, self.name, self.sha256 = model.eval(), name, sha256

    @classmethod
    def load(cls, name: str | Path) -> "Codec":
        """The codec of whatever ``zoo.load`` accepts: a pretrained name, a checkpoint folder, ``hf://...``."""
        import zoo

        return cls(zoo.load(name), str(name), weights_sha256(name))

    @torch.no_grad()
    def compress(self, images: torch.Tensor, shapes: list[tuple[int, int, int]] | None = None, *,
                 step: float | None = None, bits: float | None = None,
                 inactive_std: float = DEFAULT_INACTIVE_STD) -> list[bytes]:
        """``.zae`` bytes for each image (N, C, H, W) in [0, 1]; ``shapes`` are the originals' (C, H, W)."""
        shapes = shapes or [tuple(images.shape[1:])] * len(images)
        blobs = []
        for start in range(0, len(images), BATCH):
            batch = images[start:start + BATCH].to(self.model.device)
            mu = self.model.encode(batch).cpu()
            sigma = torch.exp(0.5 * self.model.posterior(batch)[1]).cpu() if hasattr(self.model, "posterior") else None
            for i in range(len(batch)):
                q = quantize(mu[i], None if sigma is None else sigma[i], step=step, bits=bits, inactive_std=inactive_std)
                record = CompressedImage(self.name, self.sha256, shapes[start + i], self.model.latent_dim, q)
                blobs.append(pack(record))
        return blobs

    def read(self, data: bytes, path: str | Path) -> CompressedImage:
        """Parse ``data`` (the bytes of ``path``) and check it was written by this model."""
        record = unpack(data, path)
        if record.weights_sha256 != self.sha256 or record.latent_dim != self.model.latent_dim:
            raise ModelMismatchError(
                f"{path}: written by model {record.model_name!r} (weights sha256 {record.weights_sha256}), "
                f"but the model given is {self.name!r} (sha256 {self.sha256}): refusing to decode it with the wrong weights")
        return record

    @torch.no_grad()
    def decode(self, records: list[CompressedImage]) -> torch.Tensor:
        """Images (N, C, H, W) in [0, 1] at the model's input shape: ``model.decode`` of the dequantized latents."""
        z = torch.stack([dequantize(r.quantized, self.model.latent_dim) for r in records])
        return torch.cat([self.model.decode(z[s:s + BATCH].to(self.model.device)).cpu()
                          for s in range(0, len(z), BATCH)])
