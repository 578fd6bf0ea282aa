"""``zoo decode``: images from latent codes, in this process, no server; the inverse of ``zoo encode``.

The codes are a table as ``zoo encode`` writes it (.npy with its .txt list of inputs,
.json or .csv), so ``zoo encode`` then ``zoo decode`` gives the reconstructions. Each
row is decoded by the model's ``decode`` task, as the served task decodes a ``latent``.
"""

from __future__ import annotations

from pathlib import Path

import click

from zoo.cli.app import main
from zoo.cli.local import (GRID_COLS, GRID_MAX, check_outputs, model_options, output_targets, overwrite_option,
                           png_path, scale_option, start)

TASK = "decode"


@main.command("decode")
@click.argument("name", metavar="NAME|DIR")
@click.argument("codes", metavar="CODES", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, metavar="DIR",
              help="Folder for the output PNGs: DIR/<stem>.png for each input the table lists, else "
                   "DIR/code-0000.png, code-0001.png, ... in row order.")
@click.option("--grid", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="PATH",
              help=f"Also write a PNG grid of the decodings to look at, {GRID_COLS} to a row (the first {GRID_MAX}).")
@overwrite_option
@scale_option(3)
@model_options
def decode_command(name, codes, out, grid, overwrite, scale, device, batch_size, no_progress, as_json):
    """Decode the latent codes in CODES with model NAME: one PNG per row.

    CODES is a table of latent_dim numbers per row: FILE.npy (float array, read without
    pickle; FILE.txt, if present, names the rows), FILE.json ({"values": [[...], ...],
    "files": [...]}) or FILE.csv (a header "file,z0,z1,..." then one row per code; or rows of
    numbers only), exactly as `zoo encode` writes them. Every value must be finite.
    """
    import torch

    from zoo.cli.tables import read_table
    from zoo.images import write_grid, write_png

    png_path(grid, "--grid")
    table = read_table(codes)
    run = start(name, (TASK,), device, batch_size, no_progress, as_json)
    latent_dim = run.model.latent_dim
    if latent_dim is None or table.values.shape[1] != latent_dim:
        has = "has no latent space" if latent_dim is None else f"takes {latent_dim} numbers per code"
        raise click.ClickException(f"{codes}: each row has {table.values.shape[1]} number(s), but {name} {has}")
    if table.files is not None:
        unnamed = next((i for i, f in enumerate(table.files) if not Path(f).stem), None)
        if unnamed is not None:
            raise click.ClickException(f"{codes}: row {unnamed} is listed as {table.files[unnamed]!r}, which names "
                                       "no file to call its PNG after")
        targets = output_targets([Path(f) for f in table.files], out)
    else:
        width = max(4, len(str(len(table.values) - 1)))
        targets = [out / f"code-{i:0{width}d}.png" for i in range(len(table.values))]
    check_outputs([*targets, *([grid] if grid else [])], overwrite, [codes])
    out.mkdir(parents=True, exist_ok=True)
    shown, shape = [], None
    with run.bar(len(targets), TASK, unit="code") as bar:
        for first in range(0, len(targets), batch_size):
            chunk = torch.from_numpy(table.values[first:first + batch_size]).to(run.model.device)
            images = run.model.run_task(TASK, chunk).detach().float().cpu()
            if images.shape[0] != len(chunk):
                raise click.ClickException(f"{name}: decode returned {images.shape[0]} images for {len(chunk)} codes")
            for image, target in zip(images, targets[first:first + batch_size]):
                write_png(image, target)
            room = GRID_MAX - sum(len(x) for x in shown)
            if grid is not None and room > 0:
                shown.append(images[:room])
            shape = list(images.shape[1:])
            bar.update(len(chunk))
    if grid is not None:
        decoded = torch.cat(shown)
        write_grid(decoded, grid, nrow=min(GRID_COLS, len(decoded)), scale=scale)
    run.report(f"decode: wrote {len(targets)} PNG(s) to {out}" + (f" and the grid {grid}" if grid else ""),
               {"task": TASK, "count": len(targets), "latent_dim": latent_dim, "output_shape": shape, "out": str(out),
                "grid": str(grid) if grid else None, "files": [str(t) for t in targets]})
