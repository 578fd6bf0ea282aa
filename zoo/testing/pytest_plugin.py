"""ae-zoo's pytest plugin (entry point ``pytest11``): the ``zoo_conformance`` fixture.

A plugin author's whole conformance test::

    import pytest
    from my_plugin import MyAutoencoder

    @pytest.mark.parametrize("architecture", [MyAutoencoder])
    def test_conformance(zoo_conformance, architecture):
        zoo_conformance(architecture, config={"hidden": [16]})

``pytest --zoo-package`` also builds and loads a ``.mar`` for each checked architecture (slower,
and the plugin must be installed). Nothing here imports torch until a test uses the fixture.
"""

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("ae-zoo")
    group.addoption("--zoo-package", action="store_true", default=False,
                    help="ae-zoo conformance kit: also package each architecture into a TorchServe .mar")


def pytest_configure(config):
    config.addinivalue_line("markers", "zoo_package: run the ae-zoo conformance kit's .mar packaging check "
                                       "for this test even without --zoo-package")


@pytest.fixture
def zoo_conformance(request, tmp_path):
    """``check(architecture, *, config=None, preset=None, package=None)``: run the conformance kit.

    Runs :func:`zoo.testing.check_architecture` in this test's ``tmp_path``; it raises
    ``ConformanceError`` (an AssertionError) listing every violation, and returns the report.
    ``package`` defaults to ``--zoo-package`` or a ``zoo_package`` marker on the test.
    """
    from zoo.testing import check_architecture

    wanted = request.config.getoption("--zoo-package") or request.node.get_closest_marker("zoo_package") is not None

    def check(architecture, *, config=None, preset=None, package=None):
        return check_architecture(architecture, config=config, preset=preset, workdir=tmp_path,
                                  package=wanted if package is None else package)

    return check
