"""Building blocks shared by every architecture: written once here, reused by plugins."""

from zoo.components.blocks import MLP, ConvDecoder, ConvEncoder, DownBlock, UpBlock, activation
from zoo.components.losses import (
    ELBO,
    KLWarmup,
    bernoulli_log_likelihood,
    elbo,
    gaussian_log_likelihood,
    kl_standard_normal,
)
from zoo.components.mixture_prior import (
    GaussianMixtureFit,
    GaussianMixturePrior,
    KMeansFit,
    fit_gaussian_mixture,
    kmeans,
)
from zoo.components.reparameterize import GaussianReparameterization, log_normal_standard

__all__ = [
    "MLP",
    "ConvEncoder",
    "ConvDecoder",
    "DownBlock",
    "UpBlock",
    "activation",
    "ELBO",
    "KLWarmup",
    "bernoulli_log_likelihood",
    "gaussian_log_likelihood",
    "kl_standard_normal",
    "elbo",
    "GaussianReparameterization",
    "log_normal_standard",
    "GaussianMixturePrior",
    "GaussianMixtureFit",
    "KMeansFit",
    "fit_gaussian_mixture",
    "kmeans",
]
