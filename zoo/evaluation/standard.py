"""The metric sets ae-zoo registers itself, through the same ``register_metrics`` hook as any plugin.

- ``likelihood`` (a VAE: it implements ``importance_weighted_log_likelihood``): negative ELBO,
  the IWAE bound on the test NLL with ``k`` samples, reconstruction NLL (the BCE, for a Bernoulli
  likelihood), KL and the number of active latent units;
- ``denoise`` (the ``denoise`` task, with ``corrupt``): PSNR / SSIM of the noisy input and of the
  denoised output against the clean image, at the model's own noise;
- ``colorize`` (the ``colorize`` task): PSNR / SSIM of the colorized output against the true
  colour, and of the grey copy (the input repeated over RGB) as the baseline, and the output's
  colourfulness as a percentage of the true images';
- ``reconstruction`` (any model declaring ``reconstruct`` whose input is shaped like its data): BCE,
  MSE, PSNR and SSIM of ``reconstruct(x)`` against ``x``. It is *general*, so it runs after the
  specific sets above and a model's headline stays the specific one.
"""

import contextlib
import inspect
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from zoo.components.color import rgb_to_gray
from zoo.errors import ZooError
from zoo.evaluation.colour import colourfulness
from zoo.evaluation.metrics import psnr, ssim
from zoo.evaluation.runners import report_progress
from zoo.hookspecs import hookimpl
from zoo.metrics import Metric, MetricSet


def batches(images: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(images), batch_size):
        yield images[start:start + batch_size]


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | str) -> Iterator[None]:
    """Seed the global RNGs of the CPU and of ``device`` inside the block, and restore them after it."""
    device = torch.device(device)
    accelerated = device.type != "cpu"
    with torch.random.fork_rng(devices=[device] if accelerated else [],
                               device_type=device.type if accelerated else None):
        torch.default_generator.manual_seed(seed)
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        elif accelerated:
            torch.get_device_module(device.type).manual_seed(seed)
        yield


def _means(scores: dict[str, list[torch.Tensor]]) -> dict[str, float]:
    return {key: float(torch.cat(values).double().mean()) for key, values in scores.items()}


# likelihood ------------------------------------------------------------------------------------


def _is_vae(model) -> bool:
    return callable(getattr(model, "importance_weighted_log_likelihood", None))


#: The likelihood set draws its noise for blocks of this many test images and importance samples,
#: whatever --batch-size and --chunk are, so those change the speed and the memory, never the random
#: draws. (500 and 100 were the defaults of --batch-size and --chunk: at those settings earlier
#: versions drew the very same numbers.)
DRAW_IMAGES, DRAW_SAMPLES = 500, 100


#: A latent unit is active when the variance of its posterior mean over the test images exceeds this
#: (Burda et al. 2016): below it, the unit carries next to nothing about the input.
ACTIVITY_THRESHOLD = 0.01


def _accepts(method, name: str) -> bool:
    """Whether ``method`` takes a keyword argument ``name`` (a plugin may implement an older signature)."""
    try:
        params = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _in_pieces(fn, x: torch.Tensor, size: int):
    """``fn`` over ``x`` in pieces of at most ``size`` rows, outputs concatenated (tuples element-wise)."""
    if len(x) <= size:
        return fn(x)
    parts = [fn(x[start:start + size]) for start in range(0, len(x), size)]
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(column) for column in zip(*parts))
    return torch.cat(parts)


@torch.no_grad()
def _likelihood(model, images, *, k, seed, batch_size, device, chunk) -> dict[str, float]:
    """IWAE bound, negative ELBO, reconstruction term and KL, summed in float64 and averaged.

    Decoder passes hold at most ``batch_size * chunk`` samples (``chunk`` importance samples for
    each of ``batch_size`` images). A model whose ``importance_weighted_log_likelihood`` does not
    take ``max_pass`` (an older plugin signature) is called as before: ``batch_size`` images at a
    time, ``chunk`` samples per pass, with draws that then depend on both.
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    likelihood = getattr(model.config, "likelihood", None)
    recon_key = "reconstruction_bce" if likelihood == "bernoulli" else "reconstruction_nll"
    sums = {"nll_iwae": 0.0, "neg_elbo": 0.0, recon_key: 0.0, "kl": 0.0}
    mean_sum = mean_square_sum = 0.0
    iwae = model.importance_weighted_log_likelihood
    tiled = all(_accepts(iwae, name) for name in ("max_pass", "posterior", "progress"))
    max_pass = batch_size * chunk
    for x in batches(images, DRAW_IMAGES if tiled else batch_size):
        x = x.to(device)
        if tiled:
            mu, logvar = _in_pieces(model.posterior, x, batch_size)
            log_px = iwae(x, k, generator=gen, chunk=DRAW_SAMPLES, max_pass=max_pass, posterior=(mu, logvar),
                          progress=report_progress)
        else:
            log_px = iwae(x, k, generator=gen, chunk=chunk)
            mu, logvar = model.posterior(x)
            report_progress(len(x))
        z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=gen, device=device, dtype=mu.dtype)
        recon = -model.log_likelihood(_in_pieces(model.decoder_logits, z, max_pass), x)
        kl = model.kl_divergence(mu, logvar)
        sums["nll_iwae"] += float(-log_px.double().sum())
        sums["neg_elbo"] += float((recon + kl).double().sum())
        sums[recon_key] += float(recon.double().sum())
        sums["kl"] += float(kl.double().sum())
        means = mu.detach().double().flatten(1)
        mean_sum, mean_square_sum = mean_sum + means.sum(0), mean_square_sum + means.pow(2).sum(0)
    activity = mean_square_sum / len(images) - (mean_sum / len(images)) ** 2
    return {**{key: value / len(images) for key, value in sums.items()},
            "active_units": float((activity > ACTIVITY_THRESHOLD).sum())}


LIKELIHOOD = MetricSet(
    name="likelihood",
    metrics={
        "nll_iwae": Metric("test NLL: the IWAE bound with k={k} importance samples (an upper bound on -log p(x))",
                           "nats", False),
        "neg_elbo": Metric("negative ELBO, one posterior sample per image", "nats", False),
        "reconstruction_bce": Metric("reconstruction term -log p(x|z): Bernoulli cross-entropy summed over pixels",
                                     "nats", False, required=False),
        "reconstruction_nll": Metric("reconstruction term -log p(x|z) summed over pixels", "nats", False,
                                     required=False),
        "kl": Metric("KL(q(z|x) || p(z))", "nats", False),
        "active_units": Metric(f"latent units whose posterior mean varies over the test images (variance > "
                               f"{ACTIVITY_THRESHOLD}, Burda et al. 2016)", "units", True),
    },
    headline="nll_iwae",
    headline_name="test NLL (IWAE, k={k})",
    applies=_is_vae,
    run=_likelihood,
    task_type="unconditional-image-generation",
    task_name="Density estimation (test negative log-likelihood)",
    note="Likelihood numbers are in nats per image{binarized}; compare them only with results computed the same "
         "way (IWAE bound with k = {k} importance samples, same test split).",
    requires="a VAE (a model implementing importance_weighted_log_likelihood())",
    uses_k=True,
)


# denoise ---------------------------------------------------------------------------------------


def _denoises(model) -> bool:
    return "denoise" in model.tasks and callable(getattr(model, "corrupt", None))


@torch.no_grad()
def _denoise(model, images, *, seed, batch_size, device, **_) -> dict[str, float]:
    gen = torch.Generator().manual_seed(seed)  # noise drawn on the CPU: the same inputs on any device
    scores = {"psnr_noisy": [], "psnr_denoised": [], "ssim_noisy": [], "ssim_denoised": []}
    for x in batches(images, batch_size):
        noisy = model.corrupt(x, generator=gen)
        denoised = model.denoise(noisy.to(device)).cpu()
        scores["psnr_noisy"].append(psnr(noisy, x))
        scores["psnr_denoised"].append(psnr(denoised, x))
        scores["ssim_noisy"].append(ssim(noisy, x))
        scores["ssim_denoised"].append(ssim(denoised, x))
    out = _means(scores)
    out["psnr_gain"] = out["psnr_denoised"] - out["psnr_noisy"]
    return out


DENOISE = MetricSet(
    name="denoise",
    metrics={
        "psnr_noisy": Metric("PSNR of the corrupted input vs clean", "dB", True),
        "psnr_denoised": Metric("PSNR of the denoised output vs clean", "dB", True),
        "ssim_noisy": Metric("SSIM of the corrupted input vs clean", "", True),
        "ssim_denoised": Metric("SSIM of the denoised output vs clean", "", True),
        "psnr_gain": Metric("PSNR denoised minus PSNR noisy", "dB", True),
    },
    headline="psnr_denoised",
    headline_name="denoised PSNR",
    applies=_denoises,
    run=_denoise,
    task_name="Image denoising",
    note="It removes the kind and level of noise it was trained with (see the noise fields of config.json); "
         "other noise types or much stronger noise are out of distribution.",
    requires="the denoise task and a corrupt() method",
)


# colorize --------------------------------------------------------------------------------------


def _colorizes(model) -> bool:
    return "colorize" in model.tasks


@torch.no_grad()
def _colorize(model, images, *, batch_size, device, **_) -> dict[str, float]:
    scores = {"psnr_colorized": [], "psnr_gray_baseline": [], "ssim_colorized": [], "ssim_gray_baseline": []}
    colourful = {"colorized": [], "truth": []}
    for x in batches(images, batch_size):
        gray = rgb_to_gray(x)
        colour = model.colorize(gray.to(device)).cpu()
        baseline = gray.expand(-1, 3, -1, -1)
        scores["psnr_colorized"].append(psnr(colour, x))
        scores["psnr_gray_baseline"].append(psnr(baseline, x))
        scores["ssim_colorized"].append(ssim(colour, x))
        scores["ssim_gray_baseline"].append(ssim(baseline, x))
        colourful["colorized"].append(colourfulness(colour))
        colourful["truth"].append(colourfulness(x))
    truth = float(torch.cat(colourful["truth"]).mean())
    ratio = {"colourfulness_pct_of_truth": 100 * float(torch.cat(colourful["colorized"]).mean()) / truth} \
        if truth > 0 else {}  # grey test images: no colour to compare with
    return {**_means(scores), **ratio}


COLORIZE = MetricSet(
    name="colorize",
    metrics={
        "psnr_colorized": Metric("PSNR of the colorized output vs true colour", "dB", True),
        "psnr_gray_baseline": Metric("PSNR of the grey copy vs true colour (baseline)", "dB", True),
        "ssim_colorized": Metric("SSIM of the colorized output vs true colour", "", True),
        "ssim_gray_baseline": Metric("SSIM of the grey copy vs true colour (baseline)", "", True),
        "colourfulness_pct_of_truth": Metric("mean colourfulness (Hasler & Suesstrunk) of the colorized output as % of "
                                             "the true images' (0 for grey, 100 as colourful as the truth)", "%", True,
                                             required=False),
    },
    headline="psnr_colorized",
    headline_name="colorized PSNR",
    applies=_colorizes,
    run=_colorize,
    task_name="Image colorization",
    note="Colour is ambiguous from lightness alone: expect plausible but often desaturated or wrong colours for "
         "objects whose colour the grey image does not determine. PSNR/SSIM reward cautious, greyish colours, "
         "so compare with the grey-copy baseline in the table.",
    requires="the colorize task",
)


# reconstruction (general) ----------------------------------------------------------------------


def _reconstructs(model) -> bool:
    return "reconstruct" in model.tasks and tuple(model.input_shape) == tuple(model.data_shape)


@torch.no_grad()
def _reconstruction(model, images, *, seed, batch_size, device, **_) -> dict[str, float]:
    scores = {"reconstruct_bce": [], "reconstruct_mse": [], "reconstruct_psnr": [], "reconstruct_ssim": []}
    with seeded(seed, device):  # reconstruct() of some models samples (e.g. in a stochastic layer)
        for x in batches(images, batch_size):
            out = model.reconstruct(x.to(device))
            if not isinstance(out, torch.Tensor) or out.shape != x.shape:
                found = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ZooError(f"reconstruct() returned {found} for a batch shaped {tuple(x.shape)}")
            out = out.detach().to("cpu", torch.float64)
            if not torch.isfinite(out).all():
                raise ZooError("reconstruct() returned NaN or infinite values")
            low, high = float(out.min()), float(out.max())
            if low < 0 or high > 1:
                raise ZooError(f"reconstruct() returned values in [{low:.4g}, {high:.4g}], outside [0, 1]")
            target = x.double()
            scores["reconstruct_bce"].append(
                F.binary_cross_entropy(out, target, reduction="none").flatten(1).sum(1))
            scores["reconstruct_mse"].append((out - target).pow(2).flatten(1).mean(1))
            scores["reconstruct_psnr"].append(psnr(out, target))
            scores["reconstruct_ssim"].append(ssim(out, target))
    return _means(scores)


RECONSTRUCTION = MetricSet(
    name="reconstruction",
    metrics={
        "reconstruct_bce": Metric("binary cross-entropy of reconstruct(x) vs x, summed over pixels", "nats", False),
        "reconstruct_mse": Metric("mean squared error of reconstruct(x) vs x, per pixel", "", False),
        "reconstruct_psnr": Metric("PSNR of reconstruct(x) vs x", "dB", True),
        "reconstruct_ssim": Metric("SSIM of reconstruct(x) vs x", "", True),
    },
    headline="reconstruct_psnr",
    headline_name="reconstruction PSNR",
    applies=_reconstructs,
    run=_reconstruction,
    task_name="Image reconstruction",
    note="The reconstruction metrics compare reconstruct(x) with the test image x itself{binarized}: they say how "
         "much detail survives the bottleneck, not how good the latent codes or any samples are.",
    requires="the reconstruct task, with input_shape equal to data_shape",
    general=True,
)

#: The standard sets in the order they are registered.
STANDARD_SETS = (LIKELIHOOD, DENOISE, COLORIZE, RECONSTRUCTION)


@hookimpl
def register_metrics(register):
    for metric_set in STANDARD_SETS:
        register(metric_set)
