"""Evaluation: metrics (PSNR, SSIM, IWAE NLL, ELBO) and the runner behind ``zoo eval``."""

from zoo.evaluation.metrics import psnr, ssim
from zoo.evaluation.runners import METRICS, evaluate, metric_sets

__all__ = ["METRICS", "evaluate", "metric_sets", "psnr", "ssim"]
