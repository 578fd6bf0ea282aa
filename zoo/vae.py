"""The variational autoencoder family: everything a VAE shares, so a VAE plugin only builds its networks."""

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from zoo.components import (
    GaussianReparameterization,
    KLWarmup,
    VampPrior,
    bernoulli_log_likelihood,
    elbo,
    gaussian_log_likelihood,
    importance_weighted_bound,
    kl_standard_normal,
    log_normal_standard,
)
from zoo.components.reparameterize import log_normal_diagonal, negative_entropy_diagonal
from zoo.config import ModelConfig
from zoo.model import Autoencoder

LIKELIHOODS = ("bernoulli", "gaussian")
PRIORS = ("standard", "vamp")


@dataclasses.dataclass
class VAEConfig(ModelConfig):
    """Fields every VAE has. ``observation_sigma`` is used by the Gaussian likelihood only.

    ``iwae_samples``: posterior samples per image in :meth:`VariationalAutoencoder.loss`. 1 trains the
    ELBO; ``k > 1`` trains the tighter IWAE bound (Burda et al. 2016) at ``k`` decoder passes per image.

    ``prior``: ``standard`` (N(0, I)) or ``vamp``, the VampPrior over ``pseudo_inputs`` learned images
    (:class:`zoo.components.VampPrior`).
    """

    image_channels: int = 1
    image_size: int = 28
    latent_dim: int = 20
    likelihood: str = "bernoulli"
    observation_sigma: float = 0.1
    beta: float = 1.0
    kl_warmup_steps: int = 0
    iwae_samples: int = 1
    prior: str = "standard"
    pseudo_inputs: int = 500

    def validate(self) -> None:
        self.require_positive("image_channels", "image_size", "latent_dim", "observation_sigma", "iwae_samples",
                              "pseudo_inputs")
        self.require_choice("likelihood", LIKELIHOODS)
        self.require_choice("prior", PRIORS)
        self.require(self.beta >= 0, "beta", "must be >= 0")
        self.require(self.kl_warmup_steps >= 0, "kl_warmup_steps", "must be >= 0")


class VariationalAutoencoder(Autoencoder):
    """A Gaussian-latent VAE with a standard normal prior, or the VampPrior (``prior = "vamp"``).

    Subclasses implement ``posterior(x) -> (mu, logvar)`` and
    ``decoder_logits(z)``, which returns pre-sigmoid image values shaped like
    ``input_shape``: Bernoulli logits, or the Gaussian mean before the sigmoid.

    An importance-weighted estimate of ``log p(x)`` needs three log-densities, all public:
    :meth:`log_likelihood` of :meth:`decoder_logits` (``log p(x|z)``), :meth:`log_prior`
    (``log p(z)``) and ``log N(z; mu, diag(exp(logvar)))`` with ``(mu, logvar) = posterior(x)``.
    """

    tasks = ("reconstruct", "encode", "decode", "sample", "anomaly-score")

    def __init__(self, config: VAEConfig):
        super().__init__(config)
        self.reparameterize = GaussianReparameterization()
        self.kl_schedule = KLWarmup(config.beta, config.kl_warmup_steps)
        self.vamp_prior = VampPrior(config.pseudo_inputs, self.input_shape) if config.prior == "vamp" else None

    @property
    def dynamic_binarization(self) -> bool:  # type: ignore[override]
        """A Bernoulli likelihood models binary pixels, so train and evaluate on binarized images."""
        return self.config.likelihood == "bernoulli"

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def decoder_logits(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def log_likelihood(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x | z) per sample for the configured likelihood."""
        if self.config.likelihood == "bernoulli":
            return bernoulli_log_likelihood(logits, x)
        return gaussian_log_likelihood(torch.sigmoid(logits), x, self.config.observation_sigma)

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) for latents (..., latent_dim): the standard normal, or the VampPrior. A VAE with
        another prior overrides it, and :meth:`importance_weighted_log_likelihood` then uses that prior."""
        if self.vamp_prior is not None:
            return self.vamp_prior.log_prob(z, self.posterior)
        return log_normal_standard(z)

    def kl_divergence(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """The ELBO's regulariser per image, KL(q(z|x) || p(z)). A VAE with another prior overrides it,
        and ``zoo eval``'s KL and negative ELBO then use it.

        Analytic against the standard normal. Against the VampPrior it has no closed form:
        ``E_q[log p(z)]`` is averaged over sigma points (:func:`sigma_point_kl`), so the value stays
        deterministic and per image.
        Training draws its own one-sample estimate instead (see :meth:`loss`).
        """
        if self.vamp_prior is None:
            return kl_standard_normal(mu, logvar)
        return sigma_point_kl(mu, logvar, self.log_prior)

    @torch.no_grad()
    def prior_moments(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Mean and std of each latent coordinate under the prior, or None for N(0, I).

        Code that scales latents by the prior (``zoo compress``) uses them. A VAE with another
        prior overrides this together with :meth:`log_prior`.
        """
        return None if self.vamp_prior is None else self.vamp_prior.moments(self.posterior)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.posterior(x)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder_logits(z))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.reparameterize(*self.posterior(x)))

    def loss(self, batch: torch.Tensor, step: int | None = None) -> dict[str, torch.Tensor]:
        """The negative ELBO, or with ``iwae_samples = k > 1`` the negative IWAE bound (``loss``), per batch.

        Under a KL weight ``beta`` (``beta``, ``kl_warmup_steps``) the IWAE log-weights are
        ``log p(x|z) + beta * (log p(z) - log q(z|x))``. ``reconstruction`` and ``kl`` are reported
        as for the ELBO (the reconstruction term averaged over the ``k`` samples), plus ``neg_iwae``.
        """
        mu, logvar = self.posterior(batch)
        k = self.config.iwae_samples
        weight = self.kl_schedule(step)
        if k == 1:
            z = self.reparameterize(mu, logvar, sample=True)
            kl = (self.kl_divergence(mu, logvar) if self.vamp_prior is None  # else the one-sample estimate
                  else log_normal_diagonal(z, mu, logvar) - self.log_prior(z))
            return elbo(self.log_likelihood(self.decoder_logits(z), batch), kl, weight).as_dict()
        z = self.reparameterize(mu.expand(k, *mu.shape), logvar.expand(k, *logvar.shape), sample=True)  # (k, N, D)
        log_px_z = self.log_likelihood(self.decoder_logits(z.flatten(0, 1)), _repeated(batch, k)).view(k, -1)
        log_ratio = self.log_prior(z) - log_normal_diagonal(z, mu, logvar)
        bound = importance_weighted_bound(log_px_z + weight * log_ratio)
        terms = elbo(log_px_z.mean(0).detach(), self.kl_divergence(mu, logvar).detach(), weight).as_dict()
        return {**terms, "loss": -bound.mean(), "neg_iwae": -bound.mean().detach()}

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.vamp_prior is not None:
            return self.decode(self.vamp_prior.sample(n, self.posterior, generator))
        z = torch.randn(n, self.config.latent_dim, generator=generator, device=self.device)
        return self.decode(z)

    def anomaly_score(self, x: torch.Tensor) -> torch.Tensor:
        """Negative ELBO per image at the posterior mean, in nats.

        The per-pixel terms are summed in float64: a score of a few hundred nats summed in
        float32 is only good to about 1e-4, and then depends on the order of summation (so
        on the batch size, the device and the runtime, e.g. an exported ONNX graph).
        """
        mu, logvar = self.posterior(x)
        logits, x, mu, logvar = (t.double() for t in (self.decoder_logits(mu), x, mu, logvar))
        return (self.kl_divergence(mu, logvar) - self.log_likelihood(logits, x)).float()

    @torch.no_grad()
    def importance_weighted_log_likelihood(
        self,
        x: torch.Tensor,
        k: int,
        generator: torch.Generator | None = None,
        chunk: int = 100,
        *,
        max_pass: int | None = None,
        posterior: tuple[torch.Tensor, torch.Tensor] | None = None,
        progress: Callable[[float], None] | None = None,
    ) -> torch.Tensor:
        """The IWAE lower bound on log p(x) per image, with ``k`` importance samples.

        The noise is drawn in blocks of ``chunk`` samples for all the images of ``x`` at once (one
        ``randn((size, len(x), latent_dim))`` per block, from ``generator``), so the draws depend on
        ``len(x)``, ``k`` and ``chunk`` only. Each block is decoded in passes of at most ``max_pass``
        samples (default: the whole block), which bounds the memory, and on a CPU keeps each pass
        small enough to be fast; the value does not depend on ``max_pass`` beyond float rounding.

        - ``posterior``: ``(mu, logvar)`` of ``x`` when the caller has them already.
        - The samples come from :meth:`importance_proposal`.
        - ``progress``: called after each pass with the number of images its samples amount to
          (samples / k), e.g. a progress bar's ``update``.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1 importance samples, got {k}")
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1 samples per block, got {chunk}")
        if max_pass is not None and max_pass < 1:
            raise ValueError(f"max_pass must be >= 1 decoder samples per pass, got {max_pass}")
        with _fast_inference(self):
            draw = self.importance_proposal(x, posterior)
            n, latent = len(x), self.latent_dim
            log_likelihood = self._tile_log_likelihood(x)
            log_weights = None
            for start in range(0, k, chunk):
                size = min(chunk, k - start)
                eps = torch.randn((size, n, latent), generator=generator, device=x.device, dtype=x.dtype)
                for rows, cols in _tiles(size, n, max_pass or size * n):
                    r = rows.stop - rows.start
                    z, log_q = draw(eps[rows, cols], cols)  # (r, c, latent), (r, c)
                    log_px_z = log_likelihood(self.decoder_logits(z.reshape(-1, latent)), cols, r)
                    log_w = log_px_z + self.log_prior(z) - log_q
                    if log_weights is None:
                        log_weights = torch.empty((k, n), dtype=log_w.dtype, device=log_w.device)
                    log_weights[start + rows.start:start + rows.stop, cols] = log_w
                    if progress is not None:
                        progress(log_w.numel() / k)
            return importance_weighted_bound(log_weights)

    def importance_proposal(
        self, x: torch.Tensor, posterior: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> Callable[[torch.Tensor, slice], tuple[torch.Tensor, torch.Tensor]]:
        """The distribution :meth:`importance_weighted_log_likelihood` samples from, for the images ``x``.

        Returns ``draw(eps, cols) -> (z, log_q)``: standard-normal noise ``eps`` shaped
        (r, c, latent_dim) for the images ``x[cols]`` becomes latents ``z`` of the same shape and their
        ``log q(z | x)``, shaped (r, c). Here ``q`` is the diagonal Gaussian ``posterior(x)`` (or the
        ``posterior`` given). A VAE whose posterior is more than one diagonal Gaussian, e.g. a hierarchy
        of latents, overrides this; the bound then samples its own ``q``.
        """
        mu, logvar = posterior if posterior is not None else self.posterior(x)
        std = torch.exp(0.5 * logvar)

        def draw(eps: torch.Tensor, cols: slice) -> tuple[torch.Tensor, torch.Tensor]:
            z = mu[cols] + std[cols] * eps
            return z, log_normal_diagonal(z, mu[cols], logvar[cols])

        return draw

    def _tile_log_likelihood(self, x: torch.Tensor) -> Callable[[torch.Tensor, slice, int], torch.Tensor]:
        """``f(logits, cols, r)``: log p(x[cols] | z) as (r, len(cols)) for logits of r samples of each image.

        Binary images under the built-in Bernoulli likelihood take a cheaper exact form,
        log p(x | z) = sum of log sigmoid((2x - 1) * logits) over the pixels, in fewer passes over the
        logits than ``binary_cross_entropy_with_logits`` and without repeating the targets; it equals
        the cross-entropy form up to rounding (and is the more accurate of the two for confident logits).
        Anything else goes through :meth:`log_likelihood`, overridden or not.
        """
        if (type(self).log_likelihood is VariationalAutoencoder.log_likelihood
                and self.config.likelihood == "bernoulli" and bool(((x == 0) | (x == 1)).all())):
            signs = 2 * x - 1

            def bernoulli(logits: torch.Tensor, cols: slice, r: int) -> torch.Tensor:
                terms = F.logsigmoid(logits.unflatten(0, (r, -1)) * signs[cols])
                return terms.sum(tuple(range(2, terms.dim())))

            return bernoulli

        def general(logits: torch.Tensor, cols: slice, r: int) -> torch.Tensor:
            return self.log_likelihood(logits, _repeated(x[cols], r)).view(r, -1)

        return general


def sigma_point_kl(mu: torch.Tensor, logvar: torch.Tensor, log_prior: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``KL(N(mu, diag(exp(logvar))) || p)`` per row for a prior known only by ``log_prior``, deterministically.

    ``E_q[log p(z)]`` is averaged over the ``2 * D`` sigma points ``mu +- sqrt(D) sigma_d e_d``, which
    is exact where ``log p`` is quadratic; the entropy of ``q`` is exact.
    """
    d = mu.shape[-1]
    offsets = torch.diag_embed(torch.exp(0.5 * logvar)) * d ** 0.5  # (N, D, D): row j is sqrt(D) sigma_j e_j
    points = torch.cat([mu.unsqueeze(-2) + offsets, mu.unsqueeze(-2) - offsets], dim=-2)  # (N, 2D, D)
    return negative_entropy_diagonal(logvar) - log_prior(points).mean(-1)


def _tiles(rows: int, cols: int, most: int) -> Iterator[tuple[slice, slice]]:
    """Cover a (rows samples x cols images) block with near-equal rectangles of at most ``most`` entries."""
    if most >= cols:
        pieces = -(-rows // (most // cols))
        step = -(-rows // pieces)
        for r in range(0, rows, step):
            yield slice(r, min(r + step, rows)), slice(0, cols)
    else:
        step = -(-cols // -(-cols // most))
        for r in range(rows):
            for c in range(0, cols, step):
                yield slice(r, r + 1), slice(c, min(c + step, cols))


def _repeated(x: torch.Tensor, times: int) -> torch.Tensor:
    """``x`` (c images) repeated ``times`` over, as (times * c) images: a view when times or c is 1."""
    if times == 1:
        return x
    if len(x) == 1:
        return x.expand(times, *x.shape[1:])
    return x.unsqueeze(0).expand(times, *x.shape).reshape(-1, *x.shape[1:])


#: Activation modules that can overwrite their input (``inplace=True``) with the same result.
_INPLACE_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU, nn.SiLU, nn.Mish, nn.Hardtanh,
                        nn.Hardswish, nn.Hardsigmoid)
#: forward() of layers that always return a new tensor, never their input or a view of it.
_FRESH_OUTPUT = {cls.forward for cls in (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d,
                                         nn.ConvTranspose2d, nn.ConvTranspose3d, nn.LayerNorm, nn.GroupNorm)}


def _hooked(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def _fresh_output(module: nn.Module) -> bool:
    """Whether ``module`` returns a tensor nothing else refers to (a plain layer, or a Sequential ending in one)."""
    if _hooked(module):
        return False
    if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
        return len(module) > 0 and _fresh_output(module[-1])
    return type(module).forward in _FRESH_OUTPUT


def _inplace_candidates(model: nn.Module) -> list[nn.Module]:
    """Activations inside a plain ``nn.Sequential`` that directly follow a layer with a fresh output.

    Such an activation's input is an intermediate of the Sequential's loop that nothing else holds,
    so computing it in place gives the same values without a second copy of the activations.
    """
    found = []
    for seq in model.modules():
        if not isinstance(seq, nn.Sequential) or type(seq).forward is not nn.Sequential.forward:
            continue
        for before, module in zip(seq, list(seq)[1:]):
            if (type(module) in _INPLACE_ACTIVATIONS and not module.inplace and not _hooked(module)
                    and _fresh_output(before)):
                found.append(module)
    return found


def _narrow_conv(conv: nn.Conv2d) -> bool:
    """Whether ``conv`` is a plain stride-1 convolution with few outputs per input pixel (e.g. a decoder's
    last layer, 32 channels to 1), which oneDNN runs far below its usual speed."""
    kh, kw = conv.kernel_size
    ph, pw = conv.padding if isinstance(conv.padding, tuple) else (-1, -1)  # "same"/"valid" strings: skip
    return (type(conv).forward is nn.Conv2d.forward and "forward" not in vars(conv) and not _hooked(conv)
            and conv.groups == 1
            and conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.padding_mode == "zeros"
            and 0 <= ph < kh and 0 <= pw < kw and kh * kw * conv.out_channels <= conv.in_channels)


def _narrow_conv_forward(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` as one matrix product per pixel and a sum of shifted planes (the same sum, reordered).

    Y[n, y, x, a, b, o] = sum_c x[n, c, y, x] w[o, c, a, b] is a (pixels x C) @ (C x kh*kw*O)
    product; then out[n, o, i, j] = bias[o] + sum_{a, b} Y[n, i + a - ph, j + b - pw, a, b, o], where
    the shifted index falls inside the image (zero padding). On channels-last input about 2x faster
    than oneDNN for 32 -> 1 channels.
    """
    n, c, h, w = x.shape
    (kh, kw), (ph, pw), o = conv.kernel_size, conv.padding, conv.out_channels
    taps = x.permute(0, 2, 3, 1).reshape(-1, c) @ conv.weight.permute(1, 2, 3, 0).reshape(c, kh * kw * o)
    taps = taps.view(n, h, w, kh, kw, o)
    h_out, w_out = h + 2 * ph - kh + 1, w + 2 * pw - kw + 1
    out = x.new_zeros((n, h_out, w_out, o)) if conv.bias is None else conv.bias.expand(n, h_out, w_out, o).clone()
    for a in range(kh):
        # output rows i with 0 <= i + a - ph < h
        i0, i1 = max(0, ph - a), min(h_out, h + ph - a)
        for b in range(kw):
            j0, j1 = max(0, pw - b), min(w_out, w + pw - b)
            if i0 < i1 and j0 < j1:
                out[:, i0:i1, j0:j1] += taps[:, i0 + a - ph:i1 + a - ph, j0 + b - pw:j1 + b - pw, a, b]
    return out.permute(0, 3, 1, 2)


@contextlib.contextmanager
def _fast_inference(model: nn.Module) -> Iterator[None]:
    """Inference mode with the CPU fast paths that leave the values alone, undone afterwards.

    - On the CPU, channels-last convolution weights: oneDNN then runs its faster NHWC kernels
      (the conv-vae decoder is about 1.6x faster on a Sapphire Rapids core).
    - On the CPU, a convolution with few output channels (:func:`_narrow_conv`) as a matrix product
      and shifted sums.
    - Activations computed in place where that cannot change anything (see
      :func:`_inplace_candidates`): one pass over the activations instead of two, no new buffer.

    The model's own tensors and settings are restored afterwards, so saving, exporting or
    training it is unaffected.
    """
    activations = _inplace_candidates(model)
    cpu = all(p.device.type == "cpu" for p in model.parameters())
    narrow = [m for m in model.modules() if isinstance(m, nn.Conv2d) and _narrow_conv(m)] if cpu else []
    swapped = []
    for param in model.parameters():
        data = param.data
        if (data.device.type == "cpu" and data.dim() == 4 and data.is_floating_point()
                and not data.is_contiguous(memory_format=torch.channels_last)):
            swapped.append((param, data))
            param.data = data.contiguous(memory_format=torch.channels_last)
    for module in activations:
        module.inplace = True
    for conv in narrow:
        conv.forward = functools.partial(_narrow_conv_forward, conv)
    try:
        with torch.inference_mode():
            yield
    finally:
        for module in activations:
            module.inplace = False
        for conv in narrow:
            del conv.forward
        for param, data in swapped:
            param.data = data
