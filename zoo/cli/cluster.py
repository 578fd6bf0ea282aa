"""``zoo cluster``: the cluster (mixture component) each input is assigned to, in this process, no server.

It runs the ``cluster`` task a model declares, exactly as the served task does, and
writes one whole-number index per input, plus, with ``--grid``, a picture of what each
cluster holds.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import click

from zoo.cli.app import main
from zoo.cli.local import (GRID_COLS, INPUTS_HELP, check_outputs, image_inputs, model_options, png_path, read_images,
                           run_image_task, scale_option, start, table_output)

TASK = "cluster"
#: A --grid draws at most this many clusters (rows).
GRID_MAX_CLUSTERS = 1024
#: The grey of the cells that pad a cluster's row in --grid (white is the padding between cells).
EMPTY_CELL = 0.85


@main.command("cluster", help="Assign each input to a cluster with model NAME's cluster task (e.g. a mixture-prior "
                              "VAE's most probable component).\n\nWrites one index per input to --out (column "
                              f"'cluster'), and with --grid a picture of every cluster.\n\n{INPUTS_HELP}")
@image_inputs
@table_output("clusters.csv", dtype="int64")
@click.option("--grid", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="PATH",
              help=f"Also write a PNG with one row per cluster (0, 1, ... top to bottom) showing its first "
                   f"{GRID_COLS} inputs, padded with light grey cells (a cluster no input went to is a grey row).")
@scale_option(2)
@model_options
def cluster_command(name, inputs, resize, out, overwrite, grid, scale, device, batch_size, no_progress, as_json):
    import numpy as np

    from zoo.cli.tables import table_files, write_table
    from zoo.images import expand_inputs, write_grid

    table_files(out, [])
    png_path(grid, "--grid")
    run = start(name, (TASK,), device, batch_size, no_progress, as_json)
    paths = expand_inputs(list(inputs))
    targets = table_files(out, paths)
    check_outputs([*targets, *([grid] if grid else [])], overwrite, paths)
    files = read_images(run, paths, resize)
    clusters: list[int] = []
    members: dict[int, list] = {}
    for batch, images, outputs in run_image_task(run, TASK, files):
        for image, index in zip(images, cluster_indices(run.name, outputs, len(batch))):
            shown = members.setdefault(index, [])
            if len(shown) < GRID_COLS:
                shown.append(image)
            clusters.append(index)
    if grid is not None and clusters and max(clusters) >= GRID_MAX_CLUSTERS:
        raise click.ClickException(f"{run.name}: cluster {max(clusters)} is beyond the {GRID_MAX_CLUSTERS} rows "
                                   "--grid can draw; run without --grid")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_table(out, [str(p) for p in paths], np.asarray(clusters, dtype=np.int64), [TASK],
                {"model": run.name, "task": TASK})
    if grid is not None:
        write_grid(cluster_rows(members, files.shape), grid, nrow=GRID_COLS, scale=scale)
    sizes = dict(sorted(Counter(clusters).items()))
    listed = ", ".join(f"{k}: {n}" for k, n in sizes.items())
    run.report(f"cluster: {len(paths)} input(s) in {len(sizes)} cluster(s) ({listed}) to {out}"
               + (f" and the grid {grid}" if grid else ""),
               {"task": TASK, "count": len(paths), "sizes": {str(k): n for k, n in sizes.items()}, "out": str(out),
                "grid": str(grid) if grid else None})


def cluster_indices(name: str, outputs, count: int) -> list[int]:
    """The cluster task's outputs for ``count`` images as whole numbers >= 0, or a clear error."""
    import torch

    values = outputs.reshape(-1)
    if len(values) != count:
        raise click.ClickException(f"{name}: cluster gave {len(values)} values for {count} images, not one each")
    bad = ~torch.isfinite(values) | (values != values.round()) | (values < 0)
    if bad.any():
        raise click.ClickException(f"{name}: cluster gave {float(values[bad][0])}; a cluster is a whole number >= 0")
    return [int(v) for v in values.tolist()]


def cluster_rows(members: dict[int, list], shape: tuple[int, int, int]):
    """Images for a grid of GRID_COLS columns: row k holds cluster k's images, padded with light grey cells."""
    import torch

    blank = torch.full(shape, EMPTY_CELL)
    cells = []
    for k in range(max(members) + 1):
        shown = members.get(k, [])
        cells += [*shown, *[blank] * (GRID_COLS - len(shown))]
    return torch.stack(cells)
