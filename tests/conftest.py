"""Shared fixtures: fake plugin distributions discovered through real entry points."""

# setuptools first: torch.compile's C++ builder imports it, and setuptools refuses to load (an
# AssertionError from its distutils shim) once any earlier import has pulled in the stdlib's distutils.
import setuptools  # noqa: F401

import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import zoo.plugins


@pytest.fixture
def fresh_plugins():
    """Rediscover plugins for this test (after env changes) and again afterwards."""
    zoo.plugins._host = None
    yield zoo.plugins
    zoo.plugins._host = None


@pytest.fixture
def plugin_distribution(tmp_path, monkeypatch, fresh_plugins):
    """Factory: install a throwaway distribution on sys.path whose ``zoo`` entry point is ``source``.

    It is found by importlib.metadata exactly like a pip-installed plugin.
    """
    created: list[str] = []

    def make(dist: str, source: str, version: str = "1.0") -> str:
        module = dist.replace("-", "_")
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
        info = tmp_path / f"{module}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[zoo]\n{dist} = {module}\n")
        created.append(module)
        fresh_plugins._host = None  # rediscover on next use, now with this distribution
        return module

    monkeypatch.syspath_prepend(str(tmp_path))
    yield make
    for module in created:
        sys.modules.pop(module, None)


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    """Factory: write a plain module ``name`` (no distribution, no entry point) onto sys.path; returns its name.

    For plugins registered directly (``PluginHost.register_module``) or as core modules.
    """
    created: list[str] = []

    def make(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        created.append(name)
        return name

    monkeypatch.syspath_prepend(str(tmp_path))
    yield make
    for module in created:
        sys.modules.pop(module, None)


REPO = Path(__file__).resolve().parents[1]
#: The example third-party plugins in examples/: distribution -> source folder.
EXAMPLES = {"zoo-beta-vae": REPO / "examples" / "beta_vae", "zoo-vq-ae": REPO / "examples" / "vq_ae"}
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]


def pip_install(*paths) -> None:
    """pip-install local packages into this venv for real, and rediscover plugins."""
    subprocess.run([*PIP, "install", "--no-deps", "--no-build-isolation", *map(str, paths)], check=True)
    importlib.invalidate_caches()
    zoo.plugins._host = None


def pip_uninstall(*distributions: str, modules=()) -> None:
    subprocess.run([*PIP, "uninstall", "-y", *distributions], check=True)
    importlib.invalidate_caches()
    for module in modules:
        sys.modules.pop(module, None)
    zoo.plugins._host = None


@pytest.fixture(scope="module")
def installed_examples():
    """Both example plugins pip-installed into this venv for the module's tests, then uninstalled."""
    pip_install(*EXAMPLES.values())
    yield
    pip_uninstall(*EXAMPLES, modules=("zoo_beta_vae", "zoo_vq_ae"))


def zoo_cli(*args):
    """Run the ``zoo`` CLI in process (click's runner); arguments are stringified."""
    from click.testing import CliRunner

    from zoo.cli.app import main

    return CliRunner().invoke(main, [str(a) for a in args])


def ok(*args):
    """:func:`zoo_cli` that must exit 0 (the output is shown when it does not)."""
    result = zoo_cli(*args)
    assert result.exit_code == 0, result.output
    return result
