"""ae-zoo: a plugin-based zoo of trained autoencoders.

>>> import zoo
>>> model = zoo.load("conv-vae-mnist")          # doctest: +SKIP
>>> zoo.list_models("*vae*")                    # doctest: +SKIP
"""

import importlib

from zoo.hookspecs import hookimpl

__version__ = "0.1.0"

#: Imported on first use, so that ``import zoo.errors`` or the serving client does not load torch.
_LAZY = {"create": "zoo.api", "info": "zoo.api", "list_architectures": "zoo.api", "list_models": "zoo.api",
         "load": "zoo.api",
         # What a plugin author builds on (see docs/plugin-guide.md).
         "Autoencoder": "zoo.model", "ModelConfig": "zoo.config", "VariationalAutoencoder": "zoo.vae",
         "VAEConfig": "zoo.vae", "PretrainedEntry": "zoo.registry", "TASKS": "zoo.tasks", "Task": "zoo.tasks",
         "Metric": "zoo.metrics", "MetricSet": "zoo.metrics", "TrainConfig": "zoo.training"}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

__all__ = [
    "Autoencoder",
    "Metric",
    "MetricSet",
    "ModelConfig",
    "PretrainedEntry",
    "TASKS",
    "Task",
    "TrainConfig",
    "VAEConfig",
    "VariationalAutoencoder",
    "create",
    "hookimpl",
    "info",
    "list_architectures",
    "list_models",
    "load",
    "__version__",
]
