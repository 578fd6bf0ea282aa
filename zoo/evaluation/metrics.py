"""Image-quality metrics on (N, C, H, W) tensors in [0, 1]: per-image PSNR and SSIM."""

import numpy as np
import torch


def psnr(estimate: torch.Tensor, reference: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB, (N,). Identical images give +inf, capped here at 100 dB."""
    mse = (estimate.double() - reference.double()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(data_range**2 / mse.clamp(min=1e-10))).float()


def ssim(estimate: torch.Tensor, reference: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image SSIM (scikit-image's ``structural_similarity``, channels averaged), (N,).

    The window is 7x7; images smaller than that use the largest odd window that fits (at least 3x3).
    """
    from skimage.metrics import structural_similarity

    side = min(reference.shape[-2:])
    window = min(7, side if side % 2 else side - 1)
    if window < 3:
        raise ValueError(f"SSIM needs images of at least 3x3 pixels, got {tuple(reference.shape[-2:])}")
    a = estimate.detach().to("cpu", torch.float64).numpy()
    b = reference.detach().to("cpu", torch.float64).numpy()
    scores = [structural_similarity(x, y, data_range=data_range, channel_axis=0, win_size=window)
              for x, y in zip(a, b)]
    return torch.from_numpy(np.asarray(scores, dtype=np.float64)).float()
