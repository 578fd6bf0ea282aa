"""The ``zoo`` command group; each module of zoo.cli adds its commands to it, imported when first used."""

import importlib
import json
import sys

import click

from zoo.errors import ZooError

#: Which module defines each command. A command's module is imported only when that command runs
#: (or the group's help lists it), so `zoo predict` and `zoo serve` need not wait for torch.
COMMAND_MODULES = {
    "list": "catalog", "info": "catalog", "plugins": "catalog", "data": "data", "train": "train",
    "eval": "evaluate", "package": "serve", "serve": "serve", "predict": "serve", "publish": "publish",
    "card": "publish", "export": "export", "compress": "compress", "decompress": "compress",
    "new-plugin": "scaffold",
    "sample": "local", "reconstruct": "local", "denoise": "local", "colorize": "local", "encode": "local",
    "interpolate": "local", "manifold": "local", "decode": "decode", "cluster": "cluster",
    "anomaly": "anomaly",
}


class ZooGroup(click.Group):
    """Loads command modules on demand; shows ZooErrors as one clear line and exit status 1, not a traceback."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMAND_MODULES) | set(self.commands))

    def get_command(self, ctx: click.Context, name: str):
        if name not in self.commands and name in COMMAND_MODULES:
            importlib.import_module(f"zoo.cli.{COMMAND_MODULES[name]}")
        return self.commands.get(name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ZooError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=ZooGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ae-zoo", prog_name="zoo")
def main() -> None:
    """ae-zoo: a zoo of trained autoencoders. Load, train, evaluate, serve and publish them."""


def print_json(data) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def json_option(func):
    """Adds ``--json`` (machine-readable output) to a command."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(func)


def table(rows: list[list[str]], headers: list[str]) -> str:
    """A plain left-aligned text table."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    line = lambda row: "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


