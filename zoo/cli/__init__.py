"""The ``zoo`` command line: ``main``, whose commands load their modules on first use (see ``zoo.cli.app``)."""

from zoo.cli.app import main

__all__ = ["main"]
