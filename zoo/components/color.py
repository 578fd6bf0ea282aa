"""Differentiable sRGB <-> CIE Lab (D65) conversion and greyscale luma, on (N, C, H, W) tensors."""

import torch

# sRGB (linear) -> XYZ, D65 white, and the white point used to normalise XYZ.
_RGB_TO_XYZ = torch.tensor([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]])
_WHITE = torch.tensor([0.950456, 1.0, 1.088754])
_LUMA = torch.tensor([0.299, 0.587, 0.114])
_DELTA = 6 / 29


def _srgb_to_linear(c: torch.Tensor) -> torch.Tensor:
    return torch.where(c <= 0.04045, c / 12.92, ((c.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(c: torch.Tensor) -> torch.Tensor:
    c = c.clamp(0.0, 1.0)
    return torch.where(c <= 0.0031308, 12.92 * c, 1.055 * c.clamp(min=0.0031308) ** (1 / 2.4) - 0.055)


def _mix(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,njhw->nihw", matrix.to(x), x)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] -> Lab with L in [0, 100] and a, b roughly in [-110, 110]."""
    xyz = _mix(_RGB_TO_XYZ, _srgb_to_linear(rgb)) / _WHITE.to(rgb).view(1, 3, 1, 1)
    f = torch.where(xyz > _DELTA**3, xyz.clamp(min=_DELTA**3) ** (1 / 3), xyz / (3 * _DELTA**2) + 4 / 29)
    fx, fy, fz = f.unbind(1)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Lab -> sRGB clipped to [0, 1]."""
    lightness, a, b = lab.unbind(1)
    fy = (lightness + 16) / 116
    f = torch.stack([fy + a / 500, fy, fy - b / 200], dim=1)
    xyz = torch.where(f > _DELTA, f**3, 3 * _DELTA**2 * (f - 4 / 29)) * _WHITE.to(lab).view(1, 3, 1, 1)
    return _linear_to_srgb(_mix(torch.linalg.inv(_RGB_TO_XYZ).to(lab), xyz))


def rgb_to_gray(rgb: torch.Tensor) -> torch.Tensor:
    """ITU-R BT.601 luma, the greyscale of PIL's ``convert("L")``: (N, 3, H, W) -> (N, 1, H, W)."""
    return torch.einsum("c,nchw->nhw", _LUMA.to(rgb), rgb).unsqueeze(1)


def gray_lightness(gray: torch.Tensor) -> torch.Tensor:
    """CIE L of a neutral grey (N, 1, H, W) image, so that a = b = 0 reproduces the grey exactly."""
    return rgb_to_lab(gray.expand(-1, 3, -1, -1))[:, :1]
