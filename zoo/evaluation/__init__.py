"""Evaluation: image metrics (PSNR, SSIM), the registered metric sets and the runner behind ``zoo eval``.

The standard metric sets (likelihood, denoise, colorize, reconstruction) are in
:mod:`zoo.evaluation.standard`; plugins add their own through the ``register_metrics`` hook.
"""

from zoo.evaluation.metrics import psnr, ssim
from zoo.evaluation.runners import applicable_sets, evaluate, metric_sets, registered_sets

__all__ = ["applicable_sets", "evaluate", "metric_sets", "psnr", "ssim", "registered_sets"]
