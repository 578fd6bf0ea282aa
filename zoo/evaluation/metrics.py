"""Image-quality metrics on (N, C, H, W) tensors in [0, 1]: per-image PSNR and SSIM."""

import numpy as np
import torch


def psnr(estimate: torch.Tensor, reference: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB, (N,). Identical images give +inf, capped here at 100 dB."""
    mse = (estimate.double() - reference.double()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(data_range**2 / mse.clamp(min=1e-10))).float()


def ssim(estimate: torch.Tensor, reference: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image SSIM (scikit-image's ``structural_similarity``, 7x7 window, channels averaged), (N,)."""
    from skimage.metrics import structural_similarity

    a = estimate.detach().to("cpu", torch.float64).numpy()
    b = reference.detach().to("cpu", torch.float64).numpy()
    scores = [structural_similarity(x, y, data_range=data_range, channel_axis=0) for x, y in zip(a, b)]
    return torch.from_numpy(np.asarray(scores, dtype=np.float64)).float()
