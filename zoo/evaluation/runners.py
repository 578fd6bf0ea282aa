"""``evaluate``: the metric sets a model supports, chosen from what it declares and implements.

- a VAE (it implements ``importance_weighted_log_likelihood``): negative ELBO, the IWAE bound on
  the test NLL with ``k`` samples, reconstruction NLL (the BCE, for a Bernoulli likelihood), KL;
- the ``denoise`` task (with ``corrupt``): PSNR / SSIM of the noisy input and of the denoised
  output against the clean image, at the model's own noise;
- the ``colorize`` task: PSNR / SSIM of the colorized output against the true colour, and of
  the grey copy (the input repeated over RGB) as the baseline.

Where ``model.dynamic_binarization`` is set, the test images are binarized once, with ``seed``.
Every random draw comes from generators seeded with ``seed``, so a run is reproducible on the
same kind of device.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from zoo.components import kl_standard_normal
from zoo.components.color import rgb_to_gray
from zoo.evaluation.metrics import psnr, ssim
from zoo.model import Autoencoder


@dataclass(frozen=True)
class Metric:
    description: str
    unit: str
    higher_is_better: bool


METRICS = {
    "nll_iwae": Metric("test NLL: the IWAE bound with k importance samples (an upper bound on -log p(x))", "nats", False),
    "neg_elbo": Metric("negative ELBO, one posterior sample per image", "nats", False),
    "reconstruction_bce": Metric("reconstruction term -log p(x|z): Bernoulli cross-entropy summed over pixels", "nats", False),
    "reconstruction_nll": Metric("reconstruction term -log p(x|z) summed over pixels", "nats", False),
    "kl": Metric("KL(q(z|x) || p(z))", "nats", False),
    "psnr_noisy": Metric("PSNR of the corrupted input vs clean", "dB", True),
    "psnr_denoised": Metric("PSNR of the denoised output vs clean", "dB", True),
    "psnr_gain": Metric("PSNR denoised minus PSNR noisy", "dB", True),
    "ssim_noisy": Metric("SSIM of the corrupted input vs clean", "", True),
    "ssim_denoised": Metric("SSIM of the denoised output vs clean", "", True),
    "psnr_colorized": Metric("PSNR of the colorized output vs true colour", "dB", True),
    "psnr_gray_baseline": Metric("PSNR of the grey copy vs true colour (baseline)", "dB", True),
    "ssim_colorized": Metric("SSIM of the colorized output vs true colour", "", True),
    "ssim_gray_baseline": Metric("SSIM of the grey copy vs true colour (baseline)", "", True),
}


def metric_sets(model: Autoencoder) -> list[str]:
    """Names of the metric sets that apply to ``model``, by its declared tasks and methods."""
    sets = []
    if callable(getattr(model, "importance_weighted_log_likelihood", None)):
        sets.append("likelihood")
    if "denoise" in model.tasks and callable(getattr(model, "corrupt", None)):
        sets.append("denoise")
    if "colorize" in model.tasks:
        sets.append("colorize")
    return sets


def _batches(images: torch.Tensor, batch_size: int):
    for start in range(0, len(images), batch_size):
        yield images[start:start + batch_size]


@torch.no_grad()
def _likelihood(model, images, *, k, seed, batch_size, device, chunk) -> dict[str, float]:
    gen = torch.Generator(device=device).manual_seed(seed)
    likelihood = getattr(model.config, "likelihood", None)
    recon_key = "reconstruction_bce" if likelihood == "bernoulli" else "reconstruction_nll"
    sums = {"nll_iwae": 0.0, "neg_elbo": 0.0, recon_key: 0.0, "kl": 0.0}
    for x in _batches(images, batch_size):
        x = x.to(device)
        log_px = model.importance_weighted_log_likelihood(x, k, generator=gen, chunk=chunk)
        mu, logvar = model.posterior(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=gen, device=device, dtype=mu.dtype)
        recon = -model.log_likelihood(model.decoder_logits(z), x)
        kl = kl_standard_normal(mu, logvar)
        sums["nll_iwae"] += float(-log_px.double().sum())
        sums["neg_elbo"] += float((recon + kl).double().sum())
        sums[recon_key] += float(recon.double().sum())
        sums["kl"] += float(kl.double().sum())
    return {key: value / len(images) for key, value in sums.items()}


@torch.no_grad()
def _denoise(model, images, *, seed, batch_size, device, **_) -> dict[str, float]:
    gen = torch.Generator().manual_seed(seed)  # noise drawn on the CPU: the same inputs on any device
    scores = {"psnr_noisy": [], "psnr_denoised": [], "ssim_noisy": [], "ssim_denoised": []}
    for x in _batches(images, batch_size):
        noisy = model.corrupt(x, generator=gen)
        denoised = model.denoise(noisy.to(device)).cpu()
        scores["psnr_noisy"].append(psnr(noisy, x))
        scores["psnr_denoised"].append(psnr(denoised, x))
        scores["ssim_noisy"].append(ssim(noisy, x))
        scores["ssim_denoised"].append(ssim(denoised, x))
    out = {key: float(torch.cat(v).double().mean()) for key, v in scores.items()}
    out["psnr_gain"] = out["psnr_denoised"] - out["psnr_noisy"]
    return out


@torch.no_grad()
def _colorize(model, images, *, batch_size, device, **_) -> dict[str, float]:
    scores = {"psnr_colorized": [], "psnr_gray_baseline": [], "ssim_colorized": [], "ssim_gray_baseline": []}
    for x in _batches(images, batch_size):
        gray = rgb_to_gray(x)
        colour = model.colorize(gray.to(device)).cpu()
        baseline = gray.expand(-1, 3, -1, -1)
        scores["psnr_colorized"].append(psnr(colour, x))
        scores["psnr_gray_baseline"].append(psnr(baseline, x))
        scores["ssim_colorized"].append(ssim(colour, x))
        scores["ssim_gray_baseline"].append(ssim(baseline, x))
    return {key: float(torch.cat(v).double().mean()) for key, v in scores.items()}


RUNNERS: dict[str, Callable[..., dict[str, float]]] = {"likelihood": _likelihood, "denoise": _denoise,
                                                        "colorize": _colorize}
HEADLINES = {"likelihood": "nll_iwae", "denoise": "psnr_denoised", "colorize": "psnr_colorized"}


def headline_name(metric: str, k: int) -> str:
    return {"nll_iwae": f"test NLL (IWAE, k={k})", "psnr_denoised": "denoised PSNR",
            "psnr_colorized": "colorized PSNR"}.get(metric, metric)


def evaluate(model: Autoencoder, dataset, *, k: int = 1000, seed: int = 0, limit: int | None = None,
             batch_size: int = 500, chunk: int = 100, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Every applicable metric of ``model`` on ``dataset`` (an ImageDataset), as a JSON-ready dict."""
    device = torch.device(device)
    started = time.time()
    model = model.to(device).eval()
    images = dataset.images if limit is None else dataset.images[:limit]
    images = images.float().div(255)
    if tuple(images.shape[1:]) != tuple(model.data_shape):
        from zoo.errors import ZooError

        raise ZooError(f"{model.architecture} takes data of shape {tuple(model.data_shape)}, but "
                       f"{getattr(dataset, 'name', 'the dataset')} has {tuple(images.shape[1:])}")
    if model.dynamic_binarization:
        images = torch.bernoulli(images, generator=torch.Generator().manual_seed(seed))
    sets = metric_sets(model)
    if not sets:
        from zoo.errors import UnsupportedTaskError

        raise UnsupportedTaskError(f"no evaluation applies to {model.architecture!r} (tasks: {', '.join(model.tasks)})")
    metrics: dict[str, float] = {}
    for name in sets:
        metrics.update(RUNNERS[name](model, images, k=k, seed=seed, batch_size=batch_size, device=device, chunk=chunk))
    head = HEADLINES[sets[0]]
    info = METRICS[head]
    result = {
        "format": 1,
        "architecture": model.architecture,
        "tasks": list(model.tasks),
        "metric_sets": sets,
        "dataset": getattr(dataset, "name", None),
        "split": getattr(dataset, "split", None),
        "data_checksum": getattr(dataset, "checksum", None),
        "num_images": len(images),
        "binarized": bool(model.dynamic_binarization),
        "seed": seed,
        "k": k if "likelihood" in sets else None,
        "metrics": metrics,
        "metric_info": {m: {"description": METRICS[m].description.replace("k importance", f"k={k} importance"),
                            "unit": METRICS[m].unit, "higher_is_better": METRICS[m].higher_is_better}
                        for m in metrics},
        "headline": {"name": headline_name(head, k), "metric": head, "value": metrics[head], "unit": info.unit,
                     "higher_is_better": info.higher_is_better},
        "wall_time_s": round(time.time() - started, 2),
    }
    return result
