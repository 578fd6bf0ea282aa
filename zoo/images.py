"""Image files in and out of models: finding inputs, reading them as a model's input, PNGs and grids.

Reading follows what a model declares in ``input_shape`` (C, H, W): the file is
turned into C channels (greyscale for 1, RGB for 3, alpha dropped) and must
already be H x W pixels unless ``resize`` is asked for. Everything written here
is written atomically (a temporary file renamed into place), so an interrupted
run never leaves half a PNG behind.
"""

from __future__ import annotations

import glob
import io
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from zoo.errors import ZooError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
#: Pillow mode for each channel count a model may take from an image file.
CHANNEL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
#: Decoded inputs kept in memory between checking them and running the model (uint8 bytes).
CACHE_BYTES = 256 << 20
#: Grid padding in pixels, and its colour (white).
GRID_PADDING = 2


class ImageInputError(ZooError):
    """An input path matches no image, or a file is not a readable image of the size a model takes."""


# --------------------------------------------------------------------------------------------
# Finding inputs


def expand_inputs(inputs: list[str], suffixes: frozenset[str] = IMAGE_SUFFIXES) -> list[Path]:
    """Files named by ``inputs`` (files, folders searched recursively, glob patterns), sorted, without repeats.

    Glob patterns are expanded here too, for shells (or callers) that pass them on unexpanded.
    """
    found: dict[Path, None] = {}
    kinds = "/".join(sorted(suffixes))
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
            if not matches:
                raise ImageInputError(f"{item}: the folder holds no {kinds} files")
        elif path.is_file():
            matches = [path]
        else:
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
        if not matches:
            raise ImageInputError(f"{item}: no such file, and no {kinds} files match it")
        found.update(dict.fromkeys(matches))
    return list(found)


# --------------------------------------------------------------------------------------------
# Reading


def read_input_image(path: str | Path, shape: tuple[int, int, int], *, resize: bool = False) -> torch.Tensor:
    """A PNG/JPEG file as uint8 (C, H, W) for a model taking ``shape`` = (C, H, W) images.

    EXIF orientation is applied. Colour is converted to the model's channels
    (RGB to greyscale with ITU-R BT.601 luma, greyscale to RGB by copying).
    An image of another size is refused, or with ``resize`` centre-cropped to
    the model's aspect ratio and scaled (Lanczos) to H x W.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    channels, height, width = shape
    if channels not in CHANNEL_MODES:
        raise ImageInputError(f"the model takes {channels}-channel images, which image files cannot hold "
                              f"(only {', '.join(map(str, CHANNEL_MODES))} channels)")
    try:
        with Image.open(path, formats=["PNG", "JPEG"]) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened)
    except UnidentifiedImageError:
        raise ImageInputError(f"{path}: not a PNG or JPEG image") from None
    except Image.DecompressionBombError as exc:
        raise ImageInputError(f"{path}: too many pixels to read safely ({exc})") from None
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        raise ImageInputError(f"{path}: cannot read the file ({exc.strerror})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageInputError(f"{path}: the image is truncated or corrupt ({type(exc).__name__}: {exc})") from None
    if image.size != (width, height):
        if not resize:
            raise ImageInputError(f"{path}: image is {image.width}x{image.height} pixels but the model takes "
                                  f"{width}x{height} images; resize it or pass --resize")
        image = ImageOps.fit(image, (width, height), method=Image.Resampling.LANCZOS)
    if image.mode.startswith("I"):  # 16-bit greyscale (a PNG's only integer mode): scale to 8 bits, not clip
        array = np.asarray(image).astype(np.float64) * (255.0 / 65535.0)
        image = Image.fromarray(np.clip(array, 0, 255).round().astype(np.uint8), "L")
    image = image.convert(CHANNEL_MODES[channels])
    array = np.asarray(image, dtype=np.uint8).reshape(height, width, channels)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1], the way the serving handler converts them."""
    return images.float().div_(255.0)


class ImageFiles:
    """Input files read for a model: all checked first, then handed out in batches.

    :meth:`check` decodes every file (so a bad one is named before anything is
    written) and keeps the decoded pixels in memory up to ``cache_bytes``;
    :meth:`batches` re-reads only the files that did not fit.
    """

    def __init__(self, paths: list[Path], shape: tuple[int, int, int], *, resize: bool = False,
                 cache_bytes: int = CACHE_BYTES):
        self.paths = list(paths)
        self.shape = tuple(shape)
        self.resize = resize
        self.cache_bytes = cache_bytes
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, i: int) -> torch.Tensor:
        return read_input_image(self.paths[i], self.shape, resize=self.resize)

    def check(self, progress: Callable[[int], None] | None = None) -> None:
        """Read every file; raises ImageInputError naming the first one that is not a usable image."""
        kept = 0
        for i in range(len(self.paths)):
            image = self.read(i)
            if kept + image.numel() <= self.cache_bytes:
                self._cache[i] = image
                kept += image.numel()
            if progress is not None:
                progress(1)

    def batches(self, size: int) -> Iterator[tuple[list[Path], torch.Tensor]]:
        """(paths, float (N, C, H, W) in [0, 1]) for consecutive batches of at most ``size`` files."""
        for start in range(0, len(self.paths), size):
            indices = range(start, min(start + size, len(self.paths)))
            images = torch.stack([self._cache.pop(i) if i in self._cache else self.read(i) for i in indices])
            yield [self.paths[i] for i in indices], unit_float(images)


# --------------------------------------------------------------------------------------------
# Writing


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (the folder must exist)."""
    from zoo.checkpoint import atomic_write

    path = Path(path)
    atomic_write(path, lambda tmp: tmp.write_bytes(data))
    return path


def write_png(image: torch.Tensor, path: str | Path) -> Path:
    """One float (C, H, W) image in [0, 1] as a PNG, byte for byte what the serving handler sends."""
    from zoo_handlers.images import png_bytes

    return write_bytes(path, png_bytes(image))


def grid_png(images: torch.Tensor, nrow: int, scale: int = 3) -> bytes:
    """(N, C, H, W) images in [0, 1] as the PNG bytes of one grid, ``nrow`` per row, upscaled ``scale`` times.

    Cells are separated by white padding; scaling is nearest-neighbour, so pixels stay sharp.
    """
    from PIL import Image
    from torchvision.utils import make_grid

    grid = make_grid(images.detach().float().clamp(0, 1).cpu(), nrow=nrow, padding=GRID_PADDING, pad_value=1.0)
    array = grid.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    image = Image.fromarray(array if array.shape[2] == 3 else array[:, :, 0])
    image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_grid(images: torch.Tensor, path: str | Path, nrow: int, scale: int = 3) -> Path:
    """Save (N, C, H, W) images as one PNG grid (see :func:`grid_png`), creating the folder if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_bytes(path, grid_png(images, nrow, scale))


def grid_cell(grid: np.ndarray, row: int, col: int, height: int, width: int, scale: int = 1) -> np.ndarray:
    """The pixels of cell (``row``, ``col``) of a grid written by :func:`grid_png`, as an (H, W[, C]) array."""
    step_y, step_x = (height + GRID_PADDING) * scale, (width + GRID_PADDING) * scale
    top, left = GRID_PADDING * scale + row * step_y, GRID_PADDING * scale + col * step_x
    return grid[top:top + height * scale:scale, left:left + width * scale:scale]


def paired_rows(inputs: torch.Tensor, outputs: torch.Tensor, cols: int) -> torch.Tensor:
    """Images for a grid of ``cols`` columns: a row of inputs, the row of their outputs below, and so on.

    Inputs are shown like the outputs: when their channels differ both are shown
    as RGB (greyscale copied to three channels, alpha dropped), and inputs are
    scaled (nearest) to the outputs' size. Blank (white) cells fill a short last row.
    """
    if inputs.shape[1] != outputs.shape[1]:
        inputs, outputs = _as_rgb(inputs), _as_rgb(outputs)
    if inputs.shape[2:] != outputs.shape[2:]:
        inputs = torch.nn.functional.interpolate(inputs, size=tuple(outputs.shape[2:]), mode="nearest")
    blank = torch.ones_like(outputs[:1])
    rows = []
    for start in range(0, len(outputs), cols):
        pad = [blank] * (cols - len(outputs[start:start + cols]))
        rows += [inputs[start:start + cols], *pad, outputs[start:start + cols], *pad]
    return torch.cat(rows)


def _as_rgb(images: torch.Tensor) -> torch.Tensor:
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images[:, :3]
