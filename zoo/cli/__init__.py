"""The ``zoo`` command line. Importing a command module registers its commands on ``main``."""

from zoo.cli import catalog  # noqa: F401
from zoo.cli import data  # noqa: F401
from zoo.cli import train  # noqa: F401
from zoo.cli import evaluate  # noqa: F401
from zoo.cli import serve  # noqa: F401
from zoo.cli import publish  # noqa: F401
from zoo.cli.app import main

__all__ = ["main"]
