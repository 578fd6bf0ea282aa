"""The ``zoo`` command line. Importing a command module registers its commands on ``main``."""

from zoo.cli import catalog  # noqa: F401
from zoo.cli.app import main

__all__ = ["main"]
