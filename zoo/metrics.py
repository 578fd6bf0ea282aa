"""What ``zoo eval`` computes: metrics, grouped into metric sets that declare which models they apply to.

A metric set is registered by a plugin's ``register_metrics`` hook (the standard sets are registered
by ae-zoo itself, the same way, from :mod:`zoo.evaluation.standard`). ``zoo eval`` runs every set
whose ``applies(model)`` is true, and the model card's ``model-index`` takes each set's task from
``task_type``/``task_name``.
"""

import dataclasses
from collections.abc import Callable
from typing import Any


def fill(text: str, **values: Any) -> str:
    """``text`` with each ``{name}`` placeholder replaced; other braces are left alone (no str.format)."""
    for name, value in values.items():
        text = text.replace("{" + name + "}", str(value))
    return text


@dataclasses.dataclass(frozen=True)
class Metric:
    """One number ``zoo eval`` reports: what it means, its unit and which direction is better.

    - ``description`` may use ``{k}`` (the number of importance samples of the run).
    - ``required``: False for a metric that ``run`` reports for some models only (e.g. a
      likelihood term whose name depends on the model's likelihood); a set's headline must be
      required, and ``zoo eval`` refuses a run that leaves out a required metric.
    """

    description: str
    unit: str
    higher_is_better: bool
    required: bool = True

    def describe(self, k: int) -> str:
        return fill(self.description, k=k)


@dataclasses.dataclass(frozen=True)
class MetricSet:
    """A named group of metrics and the code that measures them.

    - ``name``: lowercase-hyphenated, unique among the registered sets.
    - ``metrics``: every metric name ``run`` returns, with its :class:`Metric`. Metric names are
      lowercase snake_case and unique across all registered sets.
    - ``headline``: the metric a card and ``zoo list`` show first; one of ``metrics``.
    - ``applies(model) -> bool``: whether the set applies, decided from what the model declares
      (tasks, methods, shapes), never from its architecture name.
    - ``run(model, images, *, k, seed, batch_size, device, chunk) -> {name: value}``: ``images`` is
      the test set as a float tensor in [0, 1] shaped like ``model.data_shape``, on the CPU
      (binarized once if the model declares ``dynamic_binarization``); ``model`` is already on
      ``device`` and in eval mode. Return the mean of each metric over the images, one finite
      number per metric name of ``metrics``. Draw any randomness from generators seeded with
      ``seed`` so that a run is reproducible.
    - ``task_type``/``task_name``: the Hub ``model-index`` task the numbers belong to.
    - ``note``: a sentence for the card's limitations (may use ``{k}`` and ``{binarized}``).
    - ``headline_name``: how the headline is named in ``zoo eval``, cards and ``zoo list`` (may use
      ``{k}``); the headline metric's name when empty.
    - ``requires``: what a model needs for the set to apply, as a noun phrase ("the denoise task and
      a corrupt() method"); ``zoo eval`` shows it when no set applies to a model.
    - ``uses_k``: ``run`` uses ``k`` (importance samples), so the eval record keeps it.
    - ``general``: the set applies to many kinds of model (like the standard ``reconstruction``
      set); general sets run after the specific ones, so the headline comes from the most
      specific set that applies.
    """

    name: str
    metrics: dict[str, Metric]
    headline: str
    applies: Callable[[Any], bool]
    run: Callable[..., dict[str, float]]
    task_type: str = "image-to-image"
    task_name: str | None = None
    note: str = ""
    headline_name: str = ""
    requires: str = ""
    uses_k: bool = False
    general: bool = False

    def headline_title(self, k: int) -> str:
        return fill(self.headline_name, k=k) if self.headline_name else self.headline
