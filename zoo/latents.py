"""Walks through a model's latent space for figures: straight lines between codes, and the 2-D manifold grid."""

from __future__ import annotations

import torch

#: The prior quantiles a manifold grid spans (the tails beyond them decode to little of interest).
MANIFOLD_QUANTILES = (0.03, 0.97)


def interpolation(z_a: torch.Tensor, z_b: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` >= 2 codes evenly spaced on the line from ``z_a`` to ``z_b`` (both included): (n, D).

    The first row is ``z_a`` and the last ``z_b`` exactly.
    """
    if n < 2:
        raise ValueError(f"an interpolation needs at least 2 points (both ends), got {n}")
    steps = torch.linspace(0, 1, n, device=z_a.device, dtype=z_a.dtype).unsqueeze(1)
    return z_a * (1 - steps) + z_b * steps


def manifold_codes(side: int, quantiles: tuple[float, float] = MANIFOLD_QUANTILES) -> torch.Tensor:
    """(side * side, 2) codes on a grid over the standard normal prior's quantiles, in reading order.

    Row r, column c (row-major) holds (z0, z1) with z0 rising left to right and
    z1 falling top to bottom, so the figure reads like a plot of the latent plane.
    """
    from torch.distributions import Normal

    grid = Normal(0.0, 1.0).icdf(torch.linspace(*quantiles, side))
    return torch.stack(torch.meshgrid(grid.flip(0), grid, indexing="ij"), -1).reshape(-1, 2)[:, [1, 0]]
