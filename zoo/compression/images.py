"""Image files in and out of the codecs: expanding inputs, reading to tensors, writing PNGs."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from zoo.images import ImageInputError


def read_image(path: Path, shape: tuple[int, int, int]) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """(image converted and resized to ``shape`` = (C, H, W), as floats in [0, 1]; the original (C, H, W))."""
    try:
        with Image.open(path) as image:
            image.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageInputError(f"{path}: not a readable image ({exc})") from None
    original = (len(image.getbands()) if image.mode in ("L", "RGB") else shape[0], image.height, image.width)
    image = image.convert("L" if shape[0] == 1 else "RGB")
    if image.size != (shape[2], shape[1]):
        image = image.resize((shape[2], shape[1]), Image.Resampling.LANCZOS)
    array = np.asarray(image, dtype=np.float32).reshape(shape[1], shape[2], -1) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous(), original


def to_uint8(image: torch.Tensor, shape: tuple[int, int, int]) -> np.ndarray:
    """A decoded (C, H, W) image in [0, 1] as a uint8 (H, W) or (H, W, C) array at ``shape``."""
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    picture = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)
    picture = picture.convert("L" if shape[0] == 1 else "RGB")
    if picture.size != (shape[2], shape[1]):
        picture = picture.resize((shape[2], shape[1]), Image.Resampling.LANCZOS)
    return np.asarray(picture)


def write_png(image: torch.Tensor, shape: tuple[int, int, int], path: Path) -> None:
    """Write a decoded image at its original ``shape`` as a PNG."""
    Image.fromarray(to_uint8(image, shape)).save(path, format="PNG")
