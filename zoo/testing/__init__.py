"""The conformance kit for architecture plugins: run the whole model contract on any architecture.

>>> from zoo.testing import check_architecture
>>> check_architecture(MyAutoencoder, config={"hidden": [16]})     # doctest: +SKIP

``check_architecture`` raises :class:`ConformanceError` listing every violation it finds, and
returns a :class:`ConformanceReport` when there is none. With pytest, the ``zoo_conformance``
fixture (from this package's pytest plugin, installed with ae-zoo) runs it in a temporary
directory, so a plugin's test suite needs one parametrised test; see ``docs/plugin-guide.md``.
"""

from zoo.testing.conformance import CHECKS, ConformanceError, ConformanceReport, check_architecture

__all__ = ["CHECKS", "ConformanceError", "ConformanceReport", "check_architecture", "installed_architectures"]


def installed_architectures() -> list[str]:
    """Names of every architecture the installed plugins register, for ``pytest.mark.parametrize``."""
    from zoo.api import list_architectures

    return list_architectures()
