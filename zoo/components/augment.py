"""Random moves of image batches for augmentation: small affine moves and mirror flips."""

import math

import torch
import torch.nn.functional as F


def random_affine(x: torch.Tensor, max_shift: float = 0.0, max_rotation: float = 0.0,
                  generator: torch.Generator | None = None, mode: str = "nearest") -> torch.Tensor:
    """Shift and rotate each image of ``x`` (N, C, H, W) by its own random amount; the borders fill with 0.

    Shifts are drawn uniformly up to ``max_shift`` of the image's width and height, rotations uniformly
    in ``[-max_rotation, max_rotation]`` degrees about the centre. ``mode="nearest"`` keeps binary
    images binary; ``"bilinear"`` interpolates. With both limits 0 the batch is returned unchanged.
    """
    if x.dim() != 4:
        raise ValueError(f"random_affine expects a batch (N, C, H, W), got shape {tuple(x.shape)}")
    if not 0.0 <= max_shift < 1.0:
        raise ValueError(f"max_shift must be in [0, 1), got {max_shift}")
    if not 0.0 <= max_rotation <= 180.0:
        raise ValueError(f"max_rotation must be in [0, 180] degrees, got {max_rotation}")
    if max_shift == 0.0 and max_rotation == 0.0:
        return x
    n = x.shape[0]
    draws = torch.rand(n, 3, generator=generator, device=x.device, dtype=torch.float32) * 2 - 1
    angle = draws[:, 0] * math.radians(max_rotation)
    shift = draws[:, 1:] * (2 * max_shift)  # affine_grid's coordinates span [-1, 1]: 2 per image side
    cos, sin = angle.cos(), angle.sin()
    aspect = x.shape[-2] / x.shape[-1]  # rotate in pixels, not in affine_grid's per-axis [-1, 1] units
    theta = torch.stack([torch.stack([cos, -sin * aspect, shift[:, 0]], -1),
                         torch.stack([sin / aspect, cos, shift[:, 1]], -1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x.float(), grid, mode=mode, padding_mode="zeros", align_corners=False).to(x.dtype)


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image of ``x`` (N, C, H, W) left to right with probability 1/2, each by its own draw."""
    if x.dim() != 4:
        raise ValueError(f"random_flip expects a batch (N, C, H, W), got shape {tuple(x.shape)}")
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
