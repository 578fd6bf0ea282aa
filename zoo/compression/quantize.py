"""Rate control of the latent: which dimensions to keep, and the step that quantizes them.

**Inactive units.** For a model with ``posterior(x) -> (mu, logvar)`` (checked with ``hasattr``,
so any model that has it takes part), the posterior std ``sigma_d`` says how much the image pins
dimension ``d`` down. Where ``sigma_d >= inactive_std`` the posterior is (nearly) the prior: the
unit is inactive, the decoder ignores it, and it is not stored (it decodes to 0, the prior mean).
The file says which dimensions are kept (one adaptive bit each), so inactive units cost a
fraction of a bit instead of a quantized value. A model without ``posterior`` keeps every dimension.

**Step.** Every kept coordinate is quantized to the nearest multiple of one step ``s`` (in units
of the prior's std) and coded under the prior (see :mod:`zoo.compression.entropy`). Steps are
``2 ** (code / 8 - 6)`` for a one-byte ``code`` in 0-72, i.e. 1/64 to 8 in eighth-octave steps
(finer steps buy nothing visible: on MNIST the PSNR is flat below 1/16). ``bits`` is the
alternative: ``s = 2 ** (h - bits)`` with ``h = log2(sqrt(2 pi e))`` the differential entropy of
a standard normal in bits, so a coordinate distributed like the prior costs about ``bits`` bits.

Scaling each dimension's step by its own ``sigma_d`` (so that precise dimensions get fine steps)
was measured and dropped: the stds have to be sent (4 bits each in format version 1), and on
MNIST they cost more bytes than the finer allocation saves (conv-vae-mnist at 20.8 dB, ideal code
lengths on 1000 test images: 11.0 bytes with sigma-scaled steps and their codes, 5.8 with one step).
"""

from __future__ import annotations

import math

import torch

STEP_CODES = range(73)
#: 2 ** (j / 8) for j = 0..7, written out so that every machine builds the same steps.
_OCTAVE = (1.0, 1.0905077326652577, 1.189207115002721, 1.2968395546510096,
           1.4142135623730951, 1.5422108254079407, 1.6817928305074290, 1.8340080864093424)
GAUSSIAN_ENTROPY_BITS = 0.5 * math.log2(2 * math.pi * math.e)


def step_of(code: int) -> float:
    """The latent step a step code stands for (exact, the same on every machine)."""
    return math.ldexp(_OCTAVE[code % 8], code // 8 - 6)


def step_code(step: float | None = None, bits: float | None = None) -> int:
    """The code of the step nearest to ``step`` (prior stds) or to ``bits`` bits per kept dimension."""
    if (step is None) == (bits is None):
        raise ValueError("give exactly one of step and bits")
    if bits is not None:
        step = 2.0 ** (GAUSSIAN_ENTROPY_BITS - bits)
    if not step > 0:
        raise ValueError(f"the latent step must be > 0, got {step}")
    code = round(8 * (math.log2(step) + 6))
    if code not in STEP_CODES:
        lo, hi = step_of(STEP_CODES[0]), step_of(STEP_CODES[-1])
        asked = f"--bits {bits} (step {step:.3g})" if bits is not None else f"step {step:g}"
        raise ValueError(f"{asked} is outside the latent steps a .zae file can hold: {lo:g} to {hi:g} prior stds "
                         f"(--bits at most {GAUSSIAN_ENTROPY_BITS - math.log2(lo):.2f})")
    return code


def kept_dimensions(sigma: torch.Tensor | None, latent_dim: int, inactive_std: float) -> tuple[int, ...]:
    """The dimensions stored for one image: those whose posterior std is below ``inactive_std`` (all without one)."""
    if sigma is None:
        return tuple(range(latent_dim))
    return tuple(int(d) for d in torch.nonzero(sigma < inactive_std).flatten())


def quantize(mu: torch.Tensor, kept: tuple[int, ...], step: float) -> tuple[int, ...]:
    """The kept coordinates of ``mu`` as integer multiples of ``step`` (before clipping to the prior's range)."""
    if not kept:
        return ()
    return tuple(int(v) for v in torch.round(mu[list(kept)].double() / step))


def dequantize(kept: tuple[int, ...], symbols: tuple[int, ...], step: float, latent_dim: int) -> torch.Tensor:
    """The float32 latent vector (latent_dim,) the symbols stand for; dropped dimensions are 0."""
    z = torch.zeros(latent_dim, dtype=torch.float32)
    if kept:
        z[list(kept)] = torch.tensor([k * step for k in symbols], dtype=torch.float32)
    return z
