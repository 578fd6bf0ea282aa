"""Colour metrics for colorization: colourfulness, a/b channel correlation, and the train-mean a/b baseline.

PSNR and SSIM reward cautious, greyish colours: a model that paints everything in the average
colour of its training data scores well while colouring nothing. These numbers say how much
colour there is and whether it is the right colour:

- :func:`colourfulness`: Hasler & Süsstrunk's (2003) metric ``M = s + 0.3 m`` over the opponent
  channels ``rg = R - G`` and ``yb = (R + G) / 2 - B`` (on the 0-255 scale), where ``s`` is the root of
  the summed variances of ``rg`` and ``yb`` over an image's pixels and ``m`` the root of their summed
  squared means. 0 for any grey image; about 33 is "moderately colourful" on their scale.
- :func:`colourfulness_ratio`: the mean colourfulness of colorized images as a fraction of that of the
  true images (1 = as colourful as the truth, 0 = grey).
- :func:`ab_correlation`: Pearson's r between predicted and true Lab a (and b) over all pixels.
- :func:`mean_ab` and :func:`constant_ab`: the "train-mean a/b everywhere" baseline, which keeps the
  grey image's lightness and gives every pixel the average a/b of the training images.
"""

from collections.abc import Iterator

import torch

from zoo.components.color import gray_lightness, lab_to_rgb, rgb_to_gray, rgb_to_lab

#: Hasler & Süsstrunk weight the mean term by 0.3.
MEAN_WEIGHT = 0.3


def _batches(images: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(images), batch_size):
        yield images[start:start + batch_size]


def as_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images in [0, 255] or float images in [0, 1] -> float64 in [0, 1]."""
    if images.dtype == torch.uint8:
        return images.double() / 255.0
    if not images.is_floating_point():
        raise TypeError(f"images must be uint8 or floating point, got {images.dtype}")
    return images.double()


def colourfulness(rgb: torch.Tensor) -> torch.Tensor:
    """Hasler & Süsstrunk colourfulness of each RGB image (N, 3, H, W) in [0, 1] (or uint8): (N,) float64.

    Computed on the 0-255 scale, as in the paper, with population statistics over each image's pixels.
    """
    if rgb.ndim != 4 or rgb.shape[1] != 3:
        raise ValueError(f"colourfulness needs RGB images shaped (N, 3, H, W), got {tuple(rgb.shape)}")
    x = as_float(rgb) * 255.0
    red, green, blue = x.unbind(1)
    rg = (red - green).flatten(1)
    yb = (0.5 * (red + green) - blue).flatten(1)
    spread = torch.sqrt(rg.var(1, unbiased=False) + yb.var(1, unbiased=False))
    mean = torch.sqrt(rg.mean(1) ** 2 + yb.mean(1) ** 2)
    return spread + MEAN_WEIGHT * mean


def colourfulness_ratio(colour: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean colourfulness of ``colour`` over that of ``truth`` (same images): 1 = as colourful as the truth."""
    reference = float(colourfulness(truth).mean())
    if reference == 0:
        raise ValueError("the true images have no colour at all, so no colourfulness ratio can be formed")
    return float(colourfulness(colour).mean()) / reference


def lab_ab(rgb: torch.Tensor) -> torch.Tensor:
    """The Lab a/b channels (N, 2, H, W) of RGB images in [0, 1] (or uint8), float64."""
    return rgb_to_lab(as_float(rgb))[:, 1:]


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson's correlation of two equally sized tensors, over all their elements (nan if one is constant)."""
    if x.shape != y.shape:
        raise ValueError(f"pearson needs equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
    x, y = x.double().flatten(), y.double().flatten()
    x, y = x - x.mean(), y - y.mean()
    denominator = torch.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denominator) if denominator > 0 else float("nan")


#: A predicted a or b channel whose standard deviation is below this (Lab units, far below anything visible)
#: is taken as constant: a grey output's a/b are 0 up to rounding, and rounding noise has no correlation to report.
CONSTANT_CHROMA = 1e-3


def ab_correlation(colour: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """Pearson's r of the predicted vs true Lab a and b channels: ``{"a": r, "b": r}``.

    nan for a channel the prediction holds constant (e.g. a grey copy), where r is undefined.
    """
    predicted, true = lab_ab(colour), lab_ab(truth)
    return {name: pearson(predicted[:, i], true[:, i]) if predicted[:, i].std() >= CONSTANT_CHROMA else float("nan")
            for i, name in enumerate("ab")}


def mean_ab(images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """The mean Lab a/b over all pixels of ``images`` (RGB, uint8 or [0, 1]): a float64 tensor (2,)."""
    if len(images) == 0:
        raise ValueError("mean_ab needs at least one image")
    total = torch.zeros(2, dtype=torch.float64)
    count = 0
    for x in _batches(images, batch_size):
        ab = lab_ab(x)
        total += ab.sum(dim=(0, 2, 3))
        count += ab[:, 0].numel()
    return total / count


def constant_ab(gray: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """Colour greyscale images (N, 1, H, W) in [0, 1] with one a/b everywhere: RGB (N, 3, H, W) in [0, 1].

    The lightness is the grey image's own (as a model's output keeps it), so only the chroma differs.
    """
    lightness = gray_lightness(gray.double())
    chroma = ab.to(lightness).view(1, 2, 1, 1).expand(len(gray), 2, *gray.shape[2:])
    return lab_to_rgb(torch.cat([lightness, chroma], dim=1))


def train_mean_baseline(images: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """The train-mean a/b baseline for RGB ``images``: their grey version coloured with ``ab`` everywhere."""
    return constant_ab(rgb_to_gray(as_float(images)), ab)
