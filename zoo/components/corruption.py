"""Input corruptions for denoising objectives: Gaussian noise, salt-and-pepper and masking."""

import torch

CORRUPTIONS = ("gaussian", "salt-and-pepper", "mask")


def corrupt(x: torch.Tensor, kind: str, level: float, clip: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """Corrupt images in [0, 1].

    - ``gaussian``: add N(0, level^2) noise, clipped to [0, 1] when ``clip``.
    - ``salt-and-pepper``: set a ``level`` fraction of pixels to 0 or 1 at random.
    - ``mask``: zero a ``level`` fraction of pixels (all channels of a pixel together).
    """
    if kind == "gaussian":
        noisy = x + level * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return noisy.clamp(0.0, 1.0) if clip else noisy
    pixel_shape = (x.shape[0], 1, *x.shape[2:])
    hit = torch.rand(pixel_shape, generator=generator, device=x.device) < level
    if kind == "salt-and-pepper":
        salt = (torch.rand(pixel_shape, generator=generator, device=x.device) < 0.5).to(x.dtype)
        return torch.where(hit, salt.expand_as(x), x)
    if kind == "mask":
        return x.masked_fill(hit, 0.0)
    raise ValueError(f"unknown corruption {kind!r}; expected one of {', '.join(CORRUPTIONS)}")
