"""``zoo new-plugin NAME``: start an architecture plugin that installs and passes the conformance kit."""

from pathlib import Path

import click

from zoo.cli.app import main
from zoo.errors import ZooError


@main.command("new-plugin")
@click.argument("name")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Where to write the package [default: ./zoo-NAME].")
def new_plugin(name: str, out_dir: str | None) -> None:
    """Write an installable plugin package for a new architecture NAME (e.g. 'my-vae').

    It holds a small working model, a pyproject.toml with the `zoo` entry point, and a test
    that runs the conformance kit. Then: cd into it, `pip install -e '.[test]'`, `pytest`.
    """
    from zoo.api import list_architectures
    from zoo.scaffold import write_plugin

    if name in list_architectures():
        raise ZooError(f"architecture {name!r} is already installed; a plugin registering it again would be "
                       "skipped. Choose another name")
    directory = Path(out_dir or f"zoo-{name}")
    for path in write_plugin(name, directory):
        click.echo(f"wrote {path}")
    click.echo(f"\nnext: cd {directory} && pip install -e '.[test]' && pytest")
