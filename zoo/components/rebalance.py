"""Class rebalancing: weights that stop a classifier's loss from being dominated by its common classes.

Colorization trained as classification over colour bins sees mostly the dull bins (skies, walls,
shadows), so its predictions drift towards them. Weighting each pixel's loss by the inverse of its
bin's frequency mixed with the uniform distribution, as in Zhang, Isola & Efros (2016), makes the
rare saturated bins count.
"""

import torch


def class_rebalancing_weights(counts: torch.Tensor, strength: float) -> torch.Tensor:
    """Per-class loss weights from observed class ``counts`` (Q,): ``w ∝ 1 / (strength·p + (1 − strength)/Q)``.

    ``p`` is ``counts`` normalised to sum to 1 (uniform while nothing has been counted). ``strength`` in
    [0, 1) sets how far the weights go towards the inverse frequency: 0 weights every class 1 (no
    rebalancing), values near 1 approach the pure inverse frequency (1 itself would give a class never
    seen an infinite weight), and 0.5 is Zhang et al.'s choice (their λ = 0.5).
    The weights are scaled so that their mean under ``p`` is 1, which keeps the loss's scale.
    """
    if counts.dim() != 1 or len(counts) == 0:
        raise ValueError(f"counts must be a non-empty vector of per-class counts, got shape {tuple(counts.shape)}")
    if not 0.0 <= strength < 1.0:
        raise ValueError(f"strength must be in [0, 1), got {strength}")
    if bool((counts < 0).any()):
        raise ValueError("counts must not be negative")
    counts = counts.double()
    total = counts.sum()
    p = counts / total if total > 0 else torch.full_like(counts, 1.0 / len(counts))
    weights = 1.0 / (strength * p + (1.0 - strength) / len(counts))
    return (weights / (p * weights).sum()).float()
