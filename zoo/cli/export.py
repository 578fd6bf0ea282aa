"""``zoo export``: a model's tasks as ONNX graphs with a manifest, for servers without PyTorch."""

from pathlib import Path

import click

from zoo.cli.app import main


@main.command("export")
@click.argument("target", metavar="NAME|DIR")
@click.option("--format", "format_", type=click.Choice(["onnx"]), default="onnx", show_default=True,
              help="Graph format.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the graphs and manifest.json.")
@click.option("--opset", type=click.IntRange(min=1), default=None,
              help="ONNX opset version [default: the exporter's].")
def export_command(target, format_, out, opset):
    """Export every task of a registered model or checkpoint folder as an ONNX graph, plus manifest.json.

    Needs the onnx extra: pip install 'ae-zoo[onnx]'.
    """
    from zoo.export import export_onnx

    click.echo(f"exporting {target} to {format_} in {out}")
    export_onnx(target, out, opset=opset, progress=click.echo)
