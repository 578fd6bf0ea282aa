"""A model as an image codec: encode + quantize (+ residual) into ``.zae`` bytes, and back with decode.

Any model declaring the ``encode`` and ``decode`` tasks works; one with a ``posterior`` method
also gets its inactive units dropped (see :mod:`zoo.compression.quantize`).

**The prediction the residual layer is coded against** must be the same number when
compressing and when decompressing, or the range decoder would read a different image. It is
computed one image at a time, on the CPU, in float32, with one torch thread (batch size and
thread count change float summation order), and rounded to 8 bits before use, so tiny float
differences only matter where a value lies within rounding error of a half-step. That makes it
reproducible on the machine that wrote the file. Across machines (another CPU family, torch or
oneDNN build) it usually is, but it cannot be promised; so a file with a residual layer also
stores the crc32 of the decoded image, and a mismatch raises :class:`DecoderMismatchError`
instead of returning a wrong image. Latent-only files do not depend on this: their entropy
coding uses no model output, and the image is whatever this machine's decoder makes of the latent.
"""

from __future__ import annotations

import contextlib
import copy
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from zoo.checkpoint import WEIGHTS_NAME, sha256_file
from zoo.compression.entropy import Adaptive, PayloadError, Reader, Writer
from zoo.compression.errors import CorruptFileError, DecoderMismatchError, ModelMismatchError
from zoo.compression.format import Header, fingerprint, pack, unpack
from zoo.compression.quantize import dequantize, kept_dimensions, quantize, step_code, step_of
from zoo.compression.residual import MAX_STEP, code_residual
from zoo.errors import UnsupportedTaskError
from zoo.model import Autoencoder

REQUIRED_TASKS = ("encode", "decode")
DEFAULT_STEP = 0.25
DEFAULT_INACTIVE_STD = 0.9
BATCH = 256
HUB_PREFIX = "hf://"


def weights_sha256(name: str | Path) -> str:
    """sha256 of the ``model.safetensors`` that ``zoo.load(name)`` reads."""
    from zoo.api import checkpoint_folder

    return sha256_file(checkpoint_folder(name) / WEIGHTS_NAME)


def stored_name(name: str | Path) -> str:
    """The model name a file records: a registered name or ``hf://ORG/NAME`` as given, a checkpoint folder by its name."""
    text = str(name)
    if not text.startswith(HUB_PREFIX) and Path(text).exists():
        path = Path(text).resolve()
        return (path if path.is_dir() else path.parent).name
    return text


@dataclass(frozen=True)
class CompressedImage:
    """A parsed ``.zae`` file: its header, the latent it holds, and the payload (for the residual layer)."""

    header: Header
    kept: tuple[int, ...]
    symbols: tuple[int, ...]
    payload: bytes
    image_crc: int | None
    shape: tuple[int, int, int]
    path: str

    @property
    def model_name(self) -> str:
        return self.header.model_name

    @property
    def step(self) -> float:
        return step_of(self.header.step_code)

    @property
    def residual_step(self) -> int:
        return self.header.residual_step


@contextlib.contextmanager
def _one_thread():
    threads = torch.get_num_threads()
    if threads != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads != 1:
            torch.set_num_threads(threads)


def _code_latent(coder, latent_dim: int, step: float, kept: tuple[int, ...] | None = None,
                 symbols: tuple[int, ...] | None = None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Code (Writer) or decode (Reader) the kept-dimension bits and the kept coordinates."""
    wanted = None if kept is None else set(kept)
    context = Adaptive()
    kept = tuple(d for d in range(latent_dim) if coder.bit(context, None if wanted is None else d in wanted))
    symbols = tuple(coder.latent(step, None if symbols is None else symbols[i]) for i in range(len(kept)))
    return kept, symbols


def latent_frame(model: Autoencoder) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(mean, std)`` per latent dimension of the model's prior, or None for N(0, I) or a model without ``prior_moments``.

    Latents are quantized in units of ``std`` around ``mean``. Both are rounded to multiples of
    1/256, so that the float rounding of another machine's encoder does not move them.
    """
    moments = model.prior_moments() if hasattr(model, "prior_moments") else None
    if moments is None:
        return None
    mean, std = (torch.round(t.detach().double().cpu() * 256) / 256 for t in moments)
    return mean.float(), std.clamp(min=1 / 256).float()


class Codec:
    """Compresses image batches shaped like ``model.input_shape`` and restores them."""

    def __init__(self, model: Autoencoder, name: str, sha256: str):
        missing = [task for task in REQUIRED_TASKS if task not in model.tasks]
        if missing or model.latent_dim is None:
            raise UnsupportedTaskError(f"model {name!r} cannot compress images: it does not declare the "
                                       f"{' and '.join(missing or REQUIRED_TASKS)} task(s); it declares {', '.join(model.tasks)}")
        self.model, self.name, self.sha256 = model.eval(), name, sha256
        self._predictor: Autoencoder | None = None
        self.frame = latent_frame(self.model)

    @classmethod
    def load(cls, name: str | Path) -> "Codec":
        """The codec of whatever ``zoo.load`` accepts: a pretrained name, a checkpoint folder, ``hf://...``."""
        import zoo

        return cls(zoo.load(name), stored_name(name), weights_sha256(name))

    # ------------------------------------------------------------------ compressing

    @torch.no_grad()
    def compress(self, images: torch.Tensor, shapes: list[tuple[int, int, int]] | None = None, *,
                 step: float | None = None, bits: float | None = None, inactive_std: float = DEFAULT_INACTIVE_STD,
                 residual_step: int | None = None) -> list[bytes]:
        """``.zae`` bytes for each image (N, C, H, W) in [0, 1]; ``shapes`` are the originals' (C, H, W).

        ``step`` (prior stds) or ``bits`` (per kept dimension) sets the latent's quantization,
        default ``step=0.25``; ``residual_step`` D (1-255) adds the residual layer, with every
        pixel of the 8-bit image within D/2 (D=1: lossless).
        """
        code = step_code(DEFAULT_STEP if step is None and bits is None else step, bits)
        if residual_step is not None and not (isinstance(residual_step, int) and 1 <= residual_step <= MAX_STEP):
            raise ValueError(f"the residual step must be an integer in 1..{MAX_STEP} (1 = lossless), got {residual_step!r}")
        input_shape = tuple(self.model.input_shape)
        shapes = shapes or [input_shape] * len(images)
        targets = (images.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy() if residual_step else None
        latents = []  # (kept dims, symbols) per image, from batched encoder passes
        for start in range(0, len(images), BATCH):
            batch = images[start:start + BATCH].to(self.model.device)
            mu = self.model.encode(batch).cpu()
            sigma = torch.exp(0.5 * self.model.posterior(batch)[1]).cpu() if hasattr(self.model, "posterior") else None
            if self.frame is not None:  # in units of the prior's marginal std, centred on its mean
                mu = (mu - self.frame[0]) / self.frame[1]
                sigma = None if sigma is None else sigma / self.frame[1]
            for i in range(len(batch)):
                kept = kept_dimensions(None if sigma is None else sigma[i], self.model.latent_dim, inactive_std)
                latents.append((kept, quantize(mu[i], kept, step_of(code))))
        with _one_thread() if residual_step else contextlib.nullcontext():  # set once, not per image
            return [self._encode(Header(self.name, fingerprint(self.sha256), self.model.latent_dim, code, residual_step or 0,
                                        None if tuple(shape) == input_shape else tuple(shape)),
                                 kept, symbols, None if targets is None else targets[n])
                    for n, ((kept, symbols), shape) in enumerate(zip(latents, shapes))]

    def _encode(self, header: Header, kept: tuple[int, ...], symbols: tuple[int, ...], target: np.ndarray | None) -> bytes:
        writer = Writer()
        kept, symbols = _code_latent(writer, header.latent_dim, step_of(header.step_code), kept, symbols)
        if not header.residual_step:
            return pack(header, writer.finish())
        prediction = self.prediction(self._latent(kept, symbols, step_of(header.step_code)))
        decoded = code_residual(writer, prediction, header.residual_step, target)
        return pack(header, writer.finish(), zlib.crc32(decoded.tobytes()))

    # ------------------------------------------------------------------ decompressing

    def read(self, data: bytes, path: str | Path) -> CompressedImage:
        """Parse and check ``data`` (the bytes of ``path``): its checksums, that this model wrote it, its latent."""
        header, payload, image_crc = unpack(data, path)
        if header.fingerprint != fingerprint(self.sha256) or header.latent_dim != self.model.latent_dim:
            raise ModelMismatchError(
                f"{path}: written by model {header.model_name!r} (weights sha256 {header.fingerprint.hex()}..., "
                f"latent dim {header.latent_dim}), but the model given is {self.name!r} (sha256 {self.sha256[:16]}..., "
                f"latent dim {self.model.latent_dim}): refusing to decode it with the wrong weights")
        try:
            kept, symbols = _code_latent(Reader(payload), header.latent_dim, step_of(header.step_code))
        except PayloadError as exc:
            raise CorruptFileError(f"{path}: file is corrupt: {exc}") from None
        shape = header.shape or tuple(self.model.input_shape)
        return CompressedImage(header, kept, symbols, payload, image_crc, shape, str(path))

    @torch.no_grad()
    def decode(self, records: list[CompressedImage]) -> torch.Tensor:
        """Images (N, C, H, W) in [0, 1] at the model's input shape.

        Latent-only records: ``model.decode`` of the dequantized latents. With a residual layer:
        the 8-bit image it codes (exactly the original when lossless), as multiples of 1/255.
        """
        out = torch.empty(len(records), *self.model.input_shape)
        plain = [n for n, r in enumerate(records) if not r.residual_step]
        z = [self._latent(records[n].kept, records[n].symbols, records[n].step) for n in plain]
        for s in range(0, len(plain), BATCH):
            out[plain[s:s + BATCH]] = self.model.decode(torch.stack(z[s:s + BATCH]).to(self.model.device)).float().cpu()
        with _one_thread():
            for n, record in enumerate(records):
                if record.residual_step:
                    out[n] = torch.from_numpy(self._decode_residual(record).astype(np.float32) / 255.0)
        return out

    def _decode_residual(self, record: CompressedImage) -> np.ndarray:
        reader = Reader(record.payload)
        try:
            kept, symbols = _code_latent(reader, record.header.latent_dim, record.step)
        except PayloadError as exc:
            raise CorruptFileError(f"{record.path}: file is corrupt: {exc}") from None
        prediction = self.prediction(self._latent(kept, symbols, record.step))
        try:
            decoded = code_residual(reader, prediction, record.residual_step)
        except PayloadError as exc:
            raise DecoderMismatchError(self._mismatch(record, str(exc))) from None
        crc = zlib.crc32(decoded.tobytes())
        if crc != record.image_crc:
            raise DecoderMismatchError(self._mismatch(record, f"crc32 {crc:08x}, stored {record.image_crc:08x}"))
        return decoded

    def _latent(self, kept: tuple[int, ...], symbols: tuple[int, ...], step: float) -> torch.Tensor:
        """The latent vector the symbols stand for, back in the model's coordinates (dropped dimensions: the prior's mean)."""
        z = dequantize(kept, symbols, step, self.model.latent_dim)
        return z if self.frame is None else self.frame[0] + self.frame[1] * z

    def _mismatch(self, record: CompressedImage, detail: str) -> str:
        return (f"{record.path}: the residual layer does not decode to the image it was made from ({detail}): "
                f"this machine's prediction from model {self.name!r} differs from the one of the machine that "
                "compressed it (another CPU, torch or oneDNN build?); refusing to return a wrong image")

    @torch.no_grad()
    def prediction(self, z: torch.Tensor) -> np.ndarray:
        """The 8-bit (C, H, W) image the residual layer is coded against: ``decode(z)``, reproducibly."""
        if self._predictor is None:
            model = self.model
            if model.device.type != "cpu" or any(p.dtype != torch.float32 for p in model.parameters()):
                model = copy.deepcopy(model).to("cpu", torch.float32).eval()
            self._predictor = model
        with _one_thread():
            image = self._predictor.decode(z.to(torch.float32)[None])[0]
        return (image.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
