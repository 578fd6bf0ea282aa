"""mixture-vae: a dense VAE with a Gaussian-mixture prior that clusters its inputs (VaDE, Jiang et al. 2017).

The generative model is ``c ~ Cat(pi)``, ``z | c ~ N(mu_c, diag(sigma_c^2))``, ``x | z ~ Bernoulli(decoder(z))``
(:class:`zoo.components.GaussianMixturePrior`); the encoder gives ``q(z | x) = N(m(x), diag(s(x)^2))``
and, as in VaDE, ``q(c | x) = p(c | z)``. The ``cluster`` task assigns each image the component
``argmax_c p(c | z = m(x))``.

Training follows VaDE's recipe in one ``zoo train`` run:

1. ``pretrain_epochs`` epochs as a plain (deterministic) autoencoder: the loss is the Bernoulli
   reconstruction term of ``decoder(m(x))``; the prior is not used. With ``pretrain_corruption = p``
   it is a denoising autoencoder, as in the stacked denoising pretraining DEC and VaDE started from:
   the encoder sees ``x`` with a fraction ``p`` of its pixels zeroed and the decoder rebuilds the clean ``x``.
   With ``augment_shift``/``augment_rotation`` set, every training batch of both phases is first moved
   by a random small shift and rotation per image (:func:`zoo.components.random_affine`, as in
   DEC-DA, Guo et al. 2018), so that the codes, and the clusters fitted to them, do not split a digit
   by its position or slant.
2. During the last of those epochs the latent means of the training batches are kept (in a buffer
   that is checkpointed, so a resumed run continues exactly); at that epoch's end the trainer hook
   fits a diagonal Gaussian mixture to them (k-means++ then EM, ``init_restarts`` runs, seeded by
   the trainer) and starts the prior from it.
3. The remaining epochs minimise the negative VaDE ELBO
   ``-E_q[log p(x | z)] + KL(q(z|x) q(c|x) || p(z, c))`` with one reparameterised sample.

With ``pretrain_epochs = 0`` the ELBO is trained from the start (the prior starts at random means).
The likelihood is Bernoulli on dynamically binarized images, as for the zoo's other Bernoulli VAEs.
"""

import dataclasses
import math

import torch

import zoo
from zoo.components import MLP, GaussianMixturePrior, elbo, fit_gaussian_mixture, random_affine
from zoo.components.blocks import ACTIVATIONS
from zoo.components.corruption import corrupt
from zoo.components.reparameterize import log_normal_diagonal
from zoo.vae import VAEConfig, VariationalAutoencoder
from zoo_plugins.pretrained import bundled_entries

PRETRAINED: dict[str, str] = {  # name -> sha256 of model.safetensors
    "mixture-vae-mnist": "3aba1ccf2234f2c3499e712bc1c97d98ade99c10549175366dc777901835d504",
}


@dataclasses.dataclass
class MixtureVAEConfig(VAEConfig):
    """``hidden`` lists the encoder's hidden widths (the decoder mirrors them); ``components`` is K.

    ``pretrain_epochs``: epochs of plain-autoencoder pretraining before the prior is fitted and the
    ELBO trained (0: ELBO from the start). ``init_restarts``/``init_iterations``: EM runs (each from
    its own k-means++ seeding) and EM steps per run of the mixture fitted at the switch.
    ``pretrain_corruption``: fraction of pixels zeroed in the pretraining's encoder input (0: none);
    the mixture is fitted to the codes of the clean images. ``augment_shift`` (a fraction of the image
    side) and ``augment_rotation`` (degrees): the largest random move of each training image, in both
    phases (0: none); the mixture is fitted to the codes of the unmoved images.
    """

    latent_dim: int = 10
    hidden: tuple[int, ...] = (500, 500, 2000)
    activation: str = "relu"
    components: int = 10
    pretrain_epochs: int = 0
    init_restarts: int = 10
    init_iterations: int = 300
    pretrain_corruption: float = 0.0
    augment_shift: float = 0.0
    augment_rotation: float = 0.0

    def validate(self) -> None:
        super().validate()
        self.require(len(self.hidden) > 0, "hidden", "needs at least one hidden layer")
        self.require_positive("hidden", "components", "init_restarts", "init_iterations")
        self.require_choice("activation", ACTIVATIONS)
        self.require(self.pretrain_epochs >= 0, "pretrain_epochs", "must be >= 0")
        self.require(0.0 <= self.pretrain_corruption < 1.0, "pretrain_corruption", "must be in [0, 1)")
        self.require(0.0 <= self.augment_shift < 0.5, "augment_shift", "must be in [0, 0.5)")
        self.require(0.0 <= self.augment_rotation <= 180.0, "augment_rotation", "must be in [0, 180] degrees")
        self.require(self.iwae_samples == 1, "iwae_samples", "must be 1: mixture-vae trains the VaDE ELBO")
        self.require(self.prior == "standard", "prior", "must be 'standard': mixture-vae's prior is its own "
                                                        "Gaussian mixture")


class MixtureVAE(VariationalAutoencoder):
    """Dense VAE with a learnable Gaussian-mixture prior; ``cluster(x)`` gives each image's component."""

    architecture = "mixture-vae"
    config_class = MixtureVAEConfig
    tasks = ("cluster", "reconstruct", "encode", "decode", "sample", "anomaly-score")
    presets = {
        "784-500-500-2000-10": {"hidden": [500, 500, 2000], "latent_dim": 10, "components": 10,
                                "activation": "relu"},
    }

    def __init__(self, config: MixtureVAEConfig):
        super().__init__(config)
        features = config.image_channels * config.image_size**2
        self.encoder = MLP(features, config.hidden, 2 * config.latent_dim, config.activation)
        self.decoder = MLP(config.latent_dim, tuple(reversed(config.hidden)), features, config.activation)
        self.prior = GaussianMixturePrior(config.components, config.latent_dim)
        # Training state, checkpointed with the weights so that a resumed run continues exactly:
        # epochs trained so far, the optimiser steps of the pretraining phase, and the latent means
        # collected during the last pretraining epoch (emptied once the prior is fitted to them).
        self.register_buffer("epochs_trained", torch.zeros((), dtype=torch.int64))
        self.register_buffer("pretrain_steps", torch.zeros((), dtype=torch.int64))
        self.register_buffer("init_latents", torch.zeros(0, config.latent_dim))
        self._pending: torch.Tensor | None = None

    # -- networks ------------------------------------------------------------------------

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x.flatten(1)).chunk(2, dim=-1)

    def decoder_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).view(-1, *self.input_shape)

    # -- densities (what an independent estimator needs) -------------------------------------

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """``log p(z)`` under the mixture prior, per latent (see :mod:`zoo.components.mixture_prior`)."""
        return self.prior.log_prob(z)

    def log_posterior(self, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """``log q(z | x) = log N(z; mu, diag(exp(logvar)))`` with ``(mu, logvar) = posterior(x)``."""
        return log_normal_diagonal(z, mu, logvar)

    @torch.no_grad()
    def prior_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of each latent coordinate under the mixture prior."""
        return self.prior.moments()

    def kl_divergence(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """``KL(q(z|x) q*(c|x) || p(z, c))`` per image, with the optimal ``q*(c|x)``: the ELBO's regulariser.

        Deterministic (no sampling); it upper-bounds ``KL(q(z|x) || p(z))``, so ``-log p(x|z) + kl``
        is a valid negative ELBO.
        """
        return self.prior.kl(mu, logvar)

    # -- phases ----------------------------------------------------------------------------

    @property
    def pretraining(self) -> bool:
        """Whether ``loss`` is still the plain-autoencoder pretraining objective."""
        return int(self.epochs_trained) < self.config.pretrain_epochs

    def _collecting(self) -> bool:
        return self.config.pretrain_epochs > 0 and int(self.epochs_trained) == self.config.pretrain_epochs - 1

    def _augment(self, batch: torch.Tensor, step: int | None) -> torch.Tensor:
        """The training batch moved by the configured random shifts and rotations; others unchanged."""
        if not (self.training and step is not None):
            return batch
        return random_affine(batch, self.config.augment_shift, self.config.augment_rotation)

    def loss(self, batch: torch.Tensor, step: int | None = None) -> dict[str, torch.Tensor]:
        if self.pretraining:
            return self._pretraining_loss(batch, step)
        batch = self._augment(batch, step)
        mu, logvar = (t.float() for t in self.posterior(batch))  # the prior's terms in float32 under autocast
        z = self.reparameterize(mu, logvar, sample=True)
        kl = self.prior.kl(mu, logvar, self.prior.log_responsibilities(z))  # VaDE: q(c|x) = p(c|z)
        log_px_z = self.log_likelihood(self.decoder_logits(z).float(), batch)
        weight = self.kl_schedule(None if step is None else step - int(self.pretrain_steps))
        terms = elbo(log_px_z, kl, weight).as_dict()
        return {name: value if name == "loss" else value.detach() for name, value in terms.items()}

    def _pretraining_loss(self, batch: torch.Tensor, step: int | None) -> dict[str, torch.Tensor]:
        """Reconstruct the (in training, moved) batch from the mean code of its (corrupted) encoder input."""
        training = self.training and step is not None
        level = self.config.pretrain_corruption
        target = self._augment(batch, step)
        seen = corrupt(target, "mask", level) if training and level > 0 else target
        mu = self.posterior(seen)[0].float()
        reconstruction = -self.log_likelihood(self.decoder_logits(mu).float(), target).mean()
        if training and self._collecting():
            if seen is not batch:
                with torch.no_grad():
                    mu = self.posterior(batch)[0].float()
            self._pending = mu.detach()
        return {"loss": reconstruction, "reconstruction": reconstruction.detach()}

    def on_train_step_end(self, step: int, terms: dict[str, float]) -> None:
        if self.pretraining:
            self.pretrain_steps.fill_(step)
        if self._pending is not None:
            if torch.distributed.is_available() and torch.distributed.is_initialized() \
                    and torch.distributed.get_world_size() > 1:
                from zoo.training.errors import TrainingError

                raise TrainingError(f"{self.architecture}: pretraining (pretrain_epochs="
                                    f"{self.config.pretrain_epochs}) collects the latent means on one process "
                                    "only; train it without torchrun, or with pretrain_epochs=0")
            self.init_latents = torch.cat([self.init_latents, self._pending.to(self.init_latents)])
            self._pending = None

    def on_train_epoch_end(self, epoch: int) -> None:
        self.epochs_trained += 1
        if self.config.pretrain_epochs and int(self.epochs_trained) == self.config.pretrain_epochs:
            self.initialise_prior(self.init_latents)
            self.init_latents = self.init_latents.new_zeros(0, self.config.latent_dim)

    @torch.no_grad()
    def initialise_prior(self, latents: torch.Tensor, generator: torch.Generator | None = None) -> float:
        """Fit the mixture to ``latents`` (N, latent_dim), e.g. encoder means, and start the prior from it.

        Uses ``init_restarts`` EM runs of at most ``init_iterations`` steps; draws from ``generator``
        (the global RNG when None). Returns the fitted mixture's mean log-likelihood per latent.
        """
        k = self.config.components
        if len(latents) < k:
            raise ValueError(f"{self.architecture}: cannot start a {k}-component prior from {len(latents)} latent "
                             f"mean(s); the last pretraining epoch must see at least {k} images")
        fit = fit_gaussian_mixture(latents, k, restarts=self.config.init_restarts,
                                   iterations=self.config.init_iterations, generator=generator)
        self.prior.set_mixture_(*(t.to(self.prior.means) for t in (fit.weights, fit.means, fit.variances)))
        return fit.log_likelihood

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the collected latents vary in number: take the saved buffer's shape before loading it
        saved = state_dict.get(prefix + "init_latents")
        if isinstance(saved, torch.Tensor) and saved.dim() == 2 and saved.shape != self.init_latents.shape:
            self.init_latents = self.init_latents.new_empty(saved.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- tasks -----------------------------------------------------------------------------

    def cluster_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """``p(c | z = m(x))`` for each image, shape (N, components)."""
        return self.prior.responsibilities(self.posterior(x)[0].float())

    def cluster(self, x: torch.Tensor) -> torch.Tensor:
        """The component ``argmax_c p(c | z = m(x))`` of each image, as floats, shape (N,)."""
        return self.prior.joint_log_prob(self.posterior(x)[0].float()).argmax(-1).float()

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw a component from ``pi``, a latent from that component, and decode it."""
        z, _ = self.prior.sample(n, generator=generator, device=self.device)
        return self.decode(z)


# ------------------------------------------------------------------------------------------
# Clustering scores (need labels, so they are computed by benchmarks/clustering.py, not zoo eval)


def _as_labels(values, what: str) -> torch.Tensor:
    values = torch.as_tensor(values)
    if values.dim() != 1:
        raise ValueError(f"{what} must be one label per item, shape (N,), got {tuple(values.shape)}")
    if values.is_floating_point():
        if not torch.equal(values, values.round()):
            raise ValueError(f"{what} must be whole numbers (cluster or class indices)")
    rounded = values.round().long()
    if len(rounded) and rounded.min() < 0:
        raise ValueError(f"{what} must be non-negative indices")
    return rounded


def contingency(clusters, labels) -> torch.Tensor:
    """Counts ``n[i, j]`` of items in cluster ``i`` with label ``j``, shape (max cluster + 1, max label + 1)."""
    clusters, labels = _as_labels(clusters, "clusters"), _as_labels(labels, "labels")
    if clusters.shape != labels.shape:
        raise ValueError(f"clusters and labels must have the same length, got {len(clusters)} and {len(labels)}")
    if not len(clusters):
        raise ValueError("no items to score")
    rows, cols = int(clusters.max()) + 1, int(labels.max()) + 1
    return torch.bincount(clusters * cols + labels, minlength=rows * cols).view(rows, cols)


def hungarian(cost: list[list[float]]) -> list[int]:
    """The minimum-cost assignment of rows to distinct columns (rows <= columns): ``result[row] = column``.

    Exact: the Hungarian method with row/column potentials, O(rows^2 * columns).
    """
    n = len(cost)
    m = len(cost[0]) if n else 0
    if n > m:
        raise ValueError(f"hungarian needs rows <= columns, got {n} x {m}; pass the transpose")
    inf = math.inf
    u, v = [0.0] * (n + 1), [0.0] * (m + 1)
    owner = [0] * (m + 1)  # owner[j]: the row (1-based) assigned to column j; column 0 is a sentinel
    way = [0] * (m + 1)
    for row in range(1, n + 1):
        owner[0] = row
        col = 0
        slack = [inf] * (m + 1)
        used = [False] * (m + 1)
        while True:
            used[col] = True
            i, delta, nxt = owner[col], inf, 0
            for j in range(1, m + 1):
                if used[j]:
                    continue
                reduced = cost[i - 1][j - 1] - u[i] - v[j]
                if reduced < slack[j]:
                    slack[j], way[j] = reduced, col
                if slack[j] < delta:
                    delta, nxt = slack[j], j
            for j in range(m + 1):
                if used[j]:
                    u[owner[j]] += delta
                    v[j] -= delta
                else:
                    slack[j] -= delta
            col = nxt
            if owner[col] == 0:
                break
        while col:  # augment along the alternating path
            previous = way[col]
            owner[col] = owner[previous]
            col = previous
    result = [-1] * n
    for j in range(1, m + 1):
        if owner[j]:
            result[owner[j] - 1] = j - 1
    return result


def linear_assignment(cost: list[list[float]]) -> list[tuple[int, int]]:
    """Minimum-cost (row, column) pairs matching every row or every column, whichever are fewer.

    Uses scipy's ``linear_sum_assignment`` when scipy is installed, else :func:`hungarian`.
    """
    rows, cols = len(cost), len(cost[0])
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError:
        if rows <= cols:
            return [(i, j) for i, j in enumerate(hungarian(cost))]
        transposed = [list(column) for column in zip(*cost)]
        return sorted((i, j) for j, i in enumerate(hungarian(transposed)))
    r, c = linear_sum_assignment(cost)
    return [(int(i), int(j)) for i, j in zip(r, c)]


def cluster_to_label(clusters, labels) -> dict[int, int]:
    """The one-to-one cluster -> label map that agrees with the most items (Hungarian matching)."""
    counts = contingency(clusters, labels)
    return dict(linear_assignment((-counts.double()).tolist()))


def clustering_accuracy(clusters, labels) -> float:
    """Unsupervised clustering accuracy: the fraction of items whose cluster maps to their label under
    the best one-to-one map of clusters to labels (Hungarian matching; unmatched clusters count as wrong)."""
    counts = contingency(clusters, labels)
    pairs = linear_assignment((-counts.double()).tolist())
    return float(sum(int(counts[i, j]) for i, j in pairs)) / int(counts.sum())


def normalized_mutual_information(clusters, labels) -> float:
    """``I(C; Y) / ((H(C) + H(Y)) / 2)`` (arithmetic-mean normalisation), in [0, 1]; 1 when both are constant."""
    joint = contingency(clusters, labels).double()
    joint = joint / joint.sum()
    pc, py = joint.sum(1), joint.sum(0)
    nz = joint > 0
    mutual = float((joint[nz] * (joint[nz].log() - (pc.unsqueeze(1) * py.unsqueeze(0))[nz].log())).sum())
    entropy = lambda p: float(-(p[p > 0] * p[p > 0].log()).sum())  # noqa: E731
    h = (entropy(pc) + entropy(py)) / 2
    return 1.0 if h == 0 else max(0.0, min(1.0, mutual / h))


@zoo.hookimpl
def register_architectures(register):
    register(MixtureVAE)


@zoo.hookimpl
def register_models(register):
    for entry in bundled_entries(PRETRAINED):
        register(entry)
