"""Building blocks shared by every architecture: written once here, reused by plugins."""

from zoo.components.augment import random_affine, random_flip
from zoo.components.blocks import MLP, ConvDecoder, ConvEncoder, DownBlock, UpBlock, activation
from zoo.components.losses import (
    ELBO,
    KLWarmup,
    bernoulli_log_likelihood,
    elbo,
    gaussian_log_likelihood,
    importance_weighted_bound,
    kl_diagonal_normals,
    kl_standard_normal,
)
from zoo.components.mixture_prior import (
    GaussianMixtureFit,
    GaussianMixturePrior,
    KMeansFit,
    fit_gaussian_mixture,
    kmeans,
)
from zoo.components.rebalance import class_rebalancing_weights
from zoo.components.reparameterize import GaussianReparameterization, log_normal_standard
from zoo.components.vamp_prior import VampPrior, log_normal_components

__all__ = [
    "MLP",
    "ConvEncoder",
    "ConvDecoder",
    "DownBlock",
    "UpBlock",
    "activation",
    "random_affine",
    "random_flip",
    "ELBO",
    "KLWarmup",
    "bernoulli_log_likelihood",
    "gaussian_log_likelihood",
    "kl_standard_normal",
    "kl_diagonal_normals",
    "elbo",
    "importance_weighted_bound",
    "class_rebalancing_weights",
    "GaussianReparameterization",
    "log_normal_standard",
    "GaussianMixturePrior",
    "GaussianMixtureFit",
    "KMeansFit",
    "fit_gaussian_mixture",
    "kmeans",
    "VampPrior",
    "log_normal_components",
]
