"""``evaluate``: run every registered metric set that applies to a model and check what it returns.

The metric sets come from the plugin host (``zoo.plugins.get_host().registry.metric_sets``): ae-zoo
registers its standard sets (:mod:`zoo.evaluation.standard`) and any plugin can add more through
its ``register_metrics`` hook. Which sets apply is each set's own decision from what the model
declares (``MetricSet.applies``). They run in registration order, except that *general* sets
(such as ``reconstruction``, which applies to every model that reconstructs) run last, so the
headline comes from the most specific set.

Progress: ``evaluate(..., progress=True)`` draws a progress bar per metric set on stderr (images
done, rate and ETA). A set's ``run`` reports what it has done with :func:`report_progress`; a run
that does not (such as a plugin's) gets its bar filled when it returns. ``run``'s signature is the
same either way.

Where ``model.dynamic_binarization`` is set, the test images are binarized once, with ``seed``.
Every random draw comes from generators seeded with ``seed``, so a run is reproducible on the
same kind of device.
"""

import contextlib
import contextvars
import math
import sys
import time
from collections.abc import Callable, Iterator
from numbers import Real
from typing import Any

import torch

from zoo.errors import UnsupportedTaskError, ZooError
from zoo.metrics import MetricSet
from zoo.model import Autoencoder


#: The progress callback of the metric set running now (None outside ``evaluate`` or without progress).
_PROGRESS: contextvars.ContextVar[Callable[[float], None] | None] = contextvars.ContextVar("zoo_eval_progress",
                                                                                          default=None)


def report_progress(images: float) -> None:
    """Called by a metric set's ``run``: it has finished ``images`` more test images (fractions allowed).

    Feeds the progress bar of ``zoo eval``; does nothing when no bar is shown, so a run may call it
    unconditionally. Reporting is optional: a bar whose run never reports is filled when it returns.
    """
    report = _PROGRESS.get()
    if report is not None:
        report(images)


class _Bar:
    """A tqdm bar on stderr counting test images, fractions included (shown rounded), with rate and ETA."""

    def __init__(self, name: str, total: int):
        from tqdm import tqdm

        self.total = total
        self.bar = tqdm(total=total, desc=name, unit="images", file=sys.stderr, dynamic_ncols=True, leave=True,
                        smoothing=0.1, mininterval=0.5,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total_fmt} images "
                                   "[{elapsed}<{remaining}, {rate_fmt}]")

    def update(self, images: float) -> None:
        room = self.total - self.bar.n  # fractions may add up to a hair over the total: no negative ETA
        if room > 0:
            self.bar.update(min(images, room))

    def finish(self) -> None:
        """The set is done: show every image counted (a run may report nothing, or fractions that fall short)."""
        if self.bar.n < self.total:
            self.bar.update(self.total - self.bar.n)

    def close(self) -> None:
        self.bar.close()


ProgressFactory = Callable[[str, int], Any]


@contextlib.contextmanager
def _progress(progress: bool | ProgressFactory | None, name: str, total: int) -> Iterator[None]:
    """Show progress for one metric set: ``progress`` is True (a tqdm bar on stderr), falsy (none) or a
    factory ``(set name, number of images) -> object with update(images) and close()``, and optionally
    finish(), called when the set has completed."""
    if not progress:
        yield
        return
    bar = (_Bar if progress is True else progress)(name, total)
    token = _PROGRESS.set(bar.update)
    try:
        yield
        if callable(getattr(bar, "finish", None)):
            bar.finish()
    finally:
        _PROGRESS.reset(token)
        bar.close()


@contextlib.contextmanager
def _threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``threads`` inside the block (unchanged when None)."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def registered_sets() -> list[MetricSet]:
    """Every registered metric set, in the order ``zoo eval`` runs them: specific sets first, general last."""
    from zoo.plugins import get_host

    sets = list(get_host().registry.metric_sets.values())
    return [s for s in sets if not s.general] + [s for s in sets if s.general]


def _applies(metric_set: MetricSet, model: Autoencoder) -> bool:
    try:
        return bool(metric_set.applies(model))
    except Exception as exc:
        raise ZooError(f"metric set {metric_set.name!r}: applies() raised {type(exc).__name__}: {exc}") from exc


def applicable_sets(model: Autoencoder) -> list[MetricSet]:
    """The registered metric sets that apply to ``model``, in the order they run."""
    return [s for s in registered_sets() if _applies(s, model)]


def metric_sets(model: Autoencoder) -> list[str]:
    """Names of the metric sets that apply to ``model``, in the order ``zoo eval`` runs them."""
    return [s.name for s in applicable_sets(model)]


def _nothing_applies(model: Autoencoder) -> str:
    sets = registered_sets()
    what = (f"{model.architecture!r} (tasks: {', '.join(model.tasks)}; input_shape {tuple(model.input_shape)}, "
            f"data_shape {tuple(model.data_shape)})")
    if not sets:
        return (f"no evaluation applies to {what}: no metric sets are registered (ae-zoo registers its own from "
                "zoo.evaluation.standard; see `zoo plugins`)")
    needs = "; ".join(f"{s.name!r} needs {s.requires or 'a model its applies() accepts'}" for s in sets)
    return f"no evaluation applies to {what}. Registered metric sets: {needs}"


def _checked(metric_set: MetricSet, values: Any) -> dict[str, float]:
    """``values`` as returned by ``metric_set.run``, checked against its declaration, in declared order."""
    name = metric_set.name
    if not isinstance(values, dict):
        raise ZooError(f"metric set {name!r}: run() must return a dict of metric name -> number, "
                       f"got {type(values).__name__}")
    undeclared = [m for m in values if m not in metric_set.metrics]
    if undeclared:
        raise ZooError(f"metric set {name!r}: run() returned metric {undeclared[0]!r}, which the set does not "
                       f"declare (declared: {', '.join(metric_set.metrics)})")
    missing = [m for m, info in metric_set.metrics.items() if info.required and m not in values]
    if missing:
        raise ZooError(f"metric set {name!r}: run() did not return metric {missing[0]!r}")
    checked = {}
    for metric in metric_set.metrics:
        if metric not in values:
            continue
        value = values[metric]
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, Real):
            raise ZooError(f"metric set {name!r}: metric {metric!r} is {value!r}, not a number")
        if not math.isfinite(value):
            raise ZooError(f"metric set {name!r}: metric {metric!r} is {value}, not a finite number")
        checked[metric] = float(value)
    return checked


def evaluate(model: Autoencoder, dataset, *, k: int = 1000, seed: int = 0, limit: int | None = None,
             batch_size: int = 500, chunk: int = 100, device: torch.device | str = "cpu",
             progress: bool | ProgressFactory | None = None, threads: int | None = None) -> dict[str, Any]:
    """Every applicable metric of ``model`` on ``dataset`` (an ImageDataset), as a JSON-ready dict.

    ``progress``: True for a progress bar per metric set on stderr, or a factory ``(set name, number
    of images) -> object with update(images) and close()``. ``threads``: torch's intra-op thread
    count during the run (restored after it); None leaves it as it is.
    """
    device = torch.device(device)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ZooError(f"threads must be a whole number >= 1, got {threads!r}")
    started = time.time()
    applied = applicable_sets(model)
    if not applied:
        raise UnsupportedTaskError(_nothing_applies(model))
    model = model.to(device).eval()
    images = dataset.images if limit is None else dataset.images[:limit]
    images = images.float().div(255)
    if tuple(images.shape[1:]) != tuple(model.data_shape):
        raise ZooError(f"{model.architecture} takes data of shape {tuple(model.data_shape)}, but "
                       f"{getattr(dataset, 'name', 'the dataset')} has {tuple(images.shape[1:])}")
    if model.dynamic_binarization:
        images = torch.bernoulli(images, generator=torch.Generator().manual_seed(seed))
    metrics: dict[str, float] = {}
    info: dict[str, dict[str, Any]] = {}
    for metric_set in applied:
        try:
            with _threads(threads), _progress(progress, metric_set.name, len(images)):
                values = metric_set.run(model, images, k=k, seed=seed, batch_size=batch_size, device=device,
                                        chunk=chunk)
        except Exception as exc:
            raise ZooError(f"metric set {metric_set.name!r} failed on {model.architecture!r}: "
                           f"{type(exc).__name__}: {exc}") from exc
        for metric, value in _checked(metric_set, values).items():
            metrics[metric] = value
            declared = metric_set.metrics[metric]
            info[metric] = {"description": declared.describe(k), "unit": declared.unit,
                            "higher_is_better": declared.higher_is_better}
    lead = applied[0]
    head = lead.metrics[lead.headline]
    return {
        "format": 1,
        "architecture": model.architecture,
        "tasks": list(model.tasks),
        "metric_sets": [s.name for s in applied],
        "dataset": getattr(dataset, "name", None),
        "split": getattr(dataset, "split", None),
        "data_checksum": getattr(dataset, "checksum", None),
        "num_images": len(images),
        "binarized": bool(model.dynamic_binarization),
        "seed": seed,
        "k": k if any(s.uses_k for s in applied) else None,
        "metrics": metrics,
        "metric_info": info,
        "headline": {"name": lead.headline_title(k), "metric": lead.headline, "value": metrics[lead.headline],
                     "unit": head.unit, "higher_is_better": head.higher_is_better},
        "wall_time_s": round(time.time() - started, 2),
    }
