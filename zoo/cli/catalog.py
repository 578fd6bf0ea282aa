"""``zoo list``, ``zoo info`` and ``zoo plugins``: what the installed zoo holds."""

import dataclasses

import click

import zoo
from zoo.cli.app import json_option, main, print_json, table
from zoo.plugins import DISABLED, build_host, get_host, strict_mode


@main.command("list")
@click.argument("pattern", required=False)
@click.option("--architectures", is_flag=True, help="List architectures instead of pretrained models.")
@json_option
def list_command(pattern: str | None, architectures: bool, as_json: bool) -> None:
    """List pretrained models (or architectures), filtered by an fnmatch PATTERN such as '*vae*'."""
    registry = get_host().registry
    if architectures:
        names = zoo.list_architectures()
        if pattern:
            import fnmatch

            names = fnmatch.filter(names, pattern)
        rows = [[n, ", ".join(registry.architectures[n].tasks), registry.owners[("architecture", n)]] for n in names]
        headers = ["architecture", "tasks", "plugin"]
    else:
        names = zoo.list_models(pattern)
        rows = []
        for n in names:
            entry = registry.models[n]
            rows.append([n, entry.architecture, str(entry.metadata.get("dataset", "")), _headline(entry.metadata)])
        headers = ["model", "architecture", "dataset", "headline metric"]
    if as_json:
        print_json([dict(zip(headers, row)) for row in rows])
    elif rows:
        click.echo(table(rows, headers))
    else:
        click.echo("nothing matches" + (f" {pattern!r}" if pattern else ""))


def _headline(metadata: dict) -> str:
    headline = metadata.get("headline")
    return f"{headline['name']} = {headline['value']:.2f}" if isinstance(headline, dict) else ""


@main.command()
@click.argument("name")
def info(name: str) -> None:
    """Show an architecture or pretrained model: tasks, config, origin and metrics (as JSON)."""
    print_json(zoo.info(name))


@main.command()
@json_option
def plugins(as_json: bool) -> None:
    """List every plugin: status (loaded, skipped, disabled), distribution, version, hooks, what it registered, errors.

    It never stops at a broken plugin, in strict mode either: it lists them all, then exits with
    status 1 if any has errors while ZOO_STRICT_PLUGINS is on.
    """
    records = list(build_host(strict=False, warn=False).records.values())
    if as_json:
        print_json([dataclasses.asdict(r) for r in records])
    else:
        _print_plugins(records)
    failed = [r.name for r in records if r.errors]
    if failed and strict_mode():
        raise click.ClickException(f"ZOO_STRICT_PLUGINS is on and {len(failed)} plugin"
                                   f"{'s have' if len(failed) > 1 else ' has'} errors: {', '.join(failed)}")


def _print_plugins(records: list) -> None:
    if not records:
        click.echo("no plugins loaded (is ZOO_PLUGINS set to an empty value?)")
    for r in records:
        click.echo(f"{r.name}  ({r.distribution or 'direct'} {r.version or ''})".rstrip())
        click.echo(f"  status:     {r.status}" + (" (ZOO_DISABLE_PLUGINS)" if r.status == DISABLED else ""))
        click.echo(f"  module:     {r.module}")
        click.echo(f"  hooks:      {', '.join(r.hooks) or '-'}")
        click.echo(f"  registered: {', '.join(r.registered) or '-'}")
        for error in r.errors:
            click.secho(f"  error:      {error}", fg="red")
