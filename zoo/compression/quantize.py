"""Rate control: which latent dimensions to keep and how finely to quantize each one.

For a model with ``posterior(x) -> (mu, logvar)`` (checked with ``hasattr``, so any model
declaring it takes part), the posterior std ``sigma_d`` of each dimension says how precisely
the image pins that dimension down. Dimensions with ``sigma_d >= inactive_std`` are
*inactive* (the posterior is the prior, so the decoder ignores them): they are dropped and
decode to 0, the prior mean. Each kept dimension is quantized with step
``step * sigma_d``, so precise dimensions get fine steps and vague ones coarse steps: the
error each one adds is proportional to its own uncertainty. ``sigma_d`` is stored in four
bits as ``round(-2 * log2(sigma_d))`` (sigma from 1 down to 2**-7.5 in factors of sqrt(2):
the step needs no finer scale, and on MNIST the codes are a large part of a file), and the
decoder rebuilds the steps from those codes, so both sides use identical float32 steps.

A model without ``posterior`` keeps every dimension with ``sigma_d = 1`` (the step is absolute).
``bits`` is an alternative to ``step``: it picks the step at which the geometric mean step of
the kept dimensions splits the prior's central range [-3, 3] into ``2**bits`` bins, i.e.
about ``bits`` bits per kept dimension before entropy coding.
"""

from dataclasses import dataclass

import torch

SIGMA_CODE_SCALE = 2.0
MAX_SIGMA_CODE = 15
PRIOR_RANGE = 6.0


@dataclass(frozen=True)
class Quantized:
    """One image's quantized latent: kept dims, their sigma codes, the base step and the integers."""

    kept: tuple[int, ...]
    sigma_codes: tuple[int, ...] | None
    step: float
    symbols: tuple[int, ...]


def sigma_codes(sigma: torch.Tensor) -> torch.Tensor:
    """Four-bit codes (0-15) of posterior stds."""
    codes = torch.round(-SIGMA_CODE_SCALE * torch.log2(sigma.clamp(max=1.0)))
    return codes.clamp(0, MAX_SIGMA_CODE).to(torch.int64)


def steps(step: float, codes: tuple[int, ...] | None, count: int) -> torch.Tensor:
    """float32 quantization steps of the kept dimensions, as the decoder rebuilds them."""
    base = torch.tensor(step, dtype=torch.float32)
    if codes is None:
        return base.expand(count).clone()
    return base * torch.exp2(-torch.tensor(codes, dtype=torch.float32) / SIGMA_CODE_SCALE)


def step_for_bits(bits: float, codes: tuple[int, ...] | None) -> float:
    """The base step giving about ``bits`` bits per kept dimension."""
    mean_log2_sigma = 0.0 if not codes else -sum(codes) / len(codes) / SIGMA_CODE_SCALE
    return float(torch.tensor(PRIOR_RANGE / 2.0 ** bits / 2.0 ** mean_log2_sigma, dtype=torch.float32))


def quantize(mu: torch.Tensor, sigma: torch.Tensor | None, *, step: float | None, bits: float | None,
             inactive_std: float) -> Quantized:
    """Quantize one latent vector ``mu`` (its posterior std ``sigma``, or None) at ``step`` or ``bits``."""
    if (step is None) == (bits is None):
        raise ValueError("give exactly one of step and bits")
    if sigma is None:
        kept, codes = tuple(range(mu.numel())), None
    else:
        kept = tuple(int(i) for i in torch.nonzero(sigma < inactive_std).flatten())
        codes = tuple(int(c) for c in sigma_codes(sigma[list(kept)]))
    if bits is not None:
        step = step_for_bits(bits, codes)
    step = float(torch.tensor(step, dtype=torch.float32))  # what the header stores
    values = mu[list(kept)].float() / steps(step, codes, len(kept))
    return Quantized(kept, codes, step, tuple(int(v) for v in torch.round(values)))


def dequantize(q: Quantized, latent_dim: int) -> torch.Tensor:
    """The latent vector (latent_dim,) that ``q`` stands for; dropped dimensions are 0."""
    z = torch.zeros(latent_dim, dtype=torch.float32)
    if q.kept:
        z[list(q.kept)] = torch.tensor(q.symbols, dtype=torch.float32) * steps(q.step, q.sigma_codes, len(q.kept))
    return z
