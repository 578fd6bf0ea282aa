"""ae-zoo: a plugin-based zoo of trained autoencoders.

>>> import zoo
>>> model = zoo.load("conv-vae-mnist")          # doctest: +SKIP
>>> zoo.list_models("*vae*")                    # doctest: +SKIP
"""

from zoo.api import create, info, list_architectures, list_models, load
from zoo.hookspecs import hookimpl
from zoo.model import Autoencoder
from zoo.registry import PretrainedEntry

__version__ = "0.1.0"

__all__ = [
    "Autoencoder",
    "PretrainedEntry",
    "create",
    "hookimpl",
    "info",
    "list_architectures",
    "list_models",
    "load",
    "__version__",
]
