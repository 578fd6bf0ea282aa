"""Run a model's tasks in this process, without a server: ``zoo sample``, ``zoo reconstruct``, ``zoo denoise``,
``zoo colorize``, ``zoo encode``, ``zoo interpolate`` and ``zoo manifold``, and the helpers that
``zoo decode`` (:mod:`zoo.cli.decode`), ``zoo cluster`` (:mod:`zoo.cli.cluster`) and ``zoo anomaly`` build on.

Inputs and outputs follow ``zoo predict``: images are PNG/JPEG files read at the
model's input size and channels, and every output image is the PNG the server
would send for it. Which commands a model can run follows from the tasks it
declares (:data:`zoo.tasks.TASKS`), never from its architecture's name.

Adding a command for another image task takes one line or one small function: an
image -> image task is one more entry in :data:`IMAGE_TASK_HELP`; an image -> vector
or scalar task is a command that calls :func:`run_table_task` (both build on
:func:`run_image_task`, which runs any image-input task in batches)::

    @main.command("anomaly")
    @image_inputs
    @table_output("scores.csv")
    @model_options
    def anomaly_command(**options):
        \"\"\"Score IN... with the model's anomaly-score task.\"\"\"
        run_table_task("anomaly-score", **options)
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import click

from zoo.cli.app import main, print_json

#: The image -> image tasks that get a command of their own: ``zoo TASK NAME IN... --out DIR``.
IMAGE_TASK_HELP = {
    "reconstruct": "Reconstruct images with model NAME: each input encoded, then decoded.",
    "denoise": "Denoise images with model NAME: each (noisy) input cleaned.",
    "colorize": "Colorize images with model NAME: each input made grey, then given colour.",
}
#: Show a progress bar from this many items (and only when stderr is a terminal).
PROGRESS_MIN = 20
#: A --grid shows at most this many inputs (and their outputs), this many to a row.
GRID_MAX = 64
GRID_COLS = 8
DEVICES = ("auto", "cpu", "cuda")
MAX_SEED = 2**63 - 1

INPUTS_HELP = ("IN... are PNG/JPEG files, folders (every PNG/JPEG inside, recursively, sorted) and glob "
               "patterns (expanded here too). Each image is converted to the model's channels (colour to grey "
               "or grey to RGB) and must have the model's size, unless --resize. Every input is read and checked "
               "before anything is written.")


# --------------------------------------------------------------------------------------------
# Options shared by the commands


def _apply(func, options):
    for option in reversed(options):
        func = option(func)
    return func


def model_options(func):
    """--device, --batch-size, --no-progress and --json."""
    return _apply(func, [
        click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
                     help="Where the model runs; auto is CUDA when available, else CPU."),
        click.option("--batch-size", type=click.IntRange(1, 4096), default=64, show_default=True,
                     help="Images per forward pass."),
        click.option("--no-progress", is_flag=True,
                     help=f"No progress bar (one is drawn on stderr, only when it is a terminal, "
                          f"from {PROGRESS_MIN} items)."),
        click.option("--json", "as_json", is_flag=True,
                     help="Print a JSON summary (paths written, shapes) on stdout instead of a message."),
    ])


def image_inputs(func):
    """NAME, IN... and --resize."""
    return _apply(func, [
        click.argument("name", metavar="NAME|DIR"),
        click.argument("inputs", nargs=-1, required=True, metavar="IN..."),
        click.option("--resize", is_flag=True,
                     help="Scale images of another size to the model's: centre-crop to its aspect ratio, then "
                          "resize (Lanczos). Without it such an image is refused, naming it and the size expected."),
    ])


def overwrite_option(func):
    return click.option("--overwrite", is_flag=True,
                        help="Replace output files that already exist (without it they are refused).")(func)


def scale_option(default: int):
    return click.option("--scale", type=click.IntRange(1, 16), default=default, show_default=True,
                        help="Grid pixels per image pixel (nearest-neighbour upscaling, for viewing).")


def table_output(example: str, dtype: str = "float32"):
    """--out FILE (.npy, .json or .csv) and --overwrite, for tasks whose outputs are vectors or scalars."""
    def decorate(func):
        func = overwrite_option(func)
        return click.option(
            "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, metavar="FILE",
            help=f"e.g. {example}. FILE.npy: {dtype} array, one row per input, plus FILE.txt listing the inputs "
                 "in row order; FILE.json: {model, task, columns, files, values}; FILE.csv: a header, then "
                 "file,value... per input.")(func)
    return decorate


# --------------------------------------------------------------------------------------------
# A run: the model, where it runs, and how to report


@dataclass
class Run:
    name: str
    model: Any
    batch_size: int
    progress: bool
    as_json: bool

    @property
    def device(self) -> str:
        return str(self.model.device)

    def bar(self, total: int, label: str, unit: str = "img"):
        """A tqdm progress bar on stderr, drawn only for long inputs on a terminal."""
        from tqdm import tqdm

        return tqdm(total=total, desc=label, unit=unit, file=sys.stderr, leave=False,
                    disable=not progress_wanted(total, self.progress, sys.stderr))

    def report(self, message: str, summary: dict[str, Any]) -> None:
        if self.as_json:
            print_json({"model": self.name, "device": self.device, **summary})
        else:
            click.echo(message)


def progress_wanted(total: int, allowed: bool, stream) -> bool:
    """Whether to draw a progress bar: allowed, long enough, and ``stream`` is a terminal."""
    isatty = getattr(stream, "isatty", None)
    return bool(allowed and total >= PROGRESS_MIN and isatty is not None and isatty())


def start(name: str, tasks: tuple[str, ...], device: str, batch_size: int, no_progress: bool, as_json: bool) -> Run:
    """Load model ``name`` on ``device`` and check that it declares every one of ``tasks``."""
    import torch

    import zoo
    from zoo.errors import UnsupportedTaskError

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise click.ClickException(f"--device cuda: this PyTorch ({torch.__version__}) sees no CUDA device; "
                                   "use --device cpu")
    model = zoo.load(name, device=device)
    for task in tasks:
        try:
            model.task(task)
        except UnsupportedTaskError as exc:
            raise UnsupportedTaskError(f"{name}: {exc}") from None
    return Run(name, model, batch_size, not no_progress, as_json)


# --------------------------------------------------------------------------------------------
# Checking outputs before anything is computed


def png_path(path: Path | None, option: str) -> Path | None:
    if path is not None and path.suffix.lower() != ".png":
        raise click.UsageError(f"{option} {path}: images are written as PNG; give a path ending in .png")
    return path


def check_outputs(targets: list[Path], overwrite: bool, inputs: list[Path] = ()) -> None:
    """Refuse before any work: two outputs on one path, an output on an input, or one that exists (w/o overwrite)."""
    seen: dict[str, Path] = {}
    for target in targets:
        key = os.path.normcase(os.path.abspath(target)).casefold()  # also a clash on case-insensitive disks
        if key in seen:
            raise click.ClickException(f"{target} would be written twice (it is also {seen[key]}); "
                                       "choose different output paths")
        seen[key] = target
    sources = {os.path.normcase(os.path.realpath(p)) for p in inputs}
    for target in targets:
        if os.path.normcase(os.path.realpath(target)) in sources:
            raise click.ClickException(f"{target} is one of the inputs; write the outputs somewhere else")
        if target.is_dir():
            raise click.ClickException(f"{target} is a folder, not a file it could write")
    existing = [t for t in targets if t.exists() or t.is_symlink()]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise click.ClickException(f"{existing[0]} already exists{more}; pass --overwrite to replace, "
                                   "or choose another output")


def output_targets(paths: list[Path], out: Path, suffix: str = ".png") -> list[Path]:
    """OUT/<stem><suffix> for each input; two inputs with one stem are refused, naming both."""
    by_name: dict[str, Path] = {}
    targets = []
    for path in paths:
        target = out / f"{path.stem}{suffix}"
        key = target.name.casefold()
        if key in by_name:
            raise click.ClickException(f"{by_name[key]} and {path} would both be written to {target}; "
                                       "rename one, or run them separately")
        by_name[key] = path
        targets.append(target)
    return targets


def read_images(run: Run, paths: list[Path], resize: bool):
    """Read every image file for the model, naming the first bad one; an :class:`zoo.images.ImageFiles`."""
    from zoo.images import ImageFiles

    files = ImageFiles(paths, run.model.input_shape, resize=resize)
    with run.bar(len(files), "reading") as bar:
        files.check(bar.update)
    return files


# --------------------------------------------------------------------------------------------
# The generic runners


def run_image_task(run: Run, task: str, files) -> Iterator[tuple[list[Path], Any, Any]]:
    """Run image-input ``task`` on ``files`` in batches: yields (paths, inputs, outputs) for each batch."""
    from zoo.tasks import TASKS

    if TASKS[task].input != "image":
        raise click.ClickException(f"task {task!r} does not take images")
    with run.bar(len(files), task) as bar:
        for paths, images in files.batches(run.batch_size):
            outputs = run.model.run_task(task, images.to(run.model.device)).detach().float().cpu()
            if outputs.shape[0] != len(paths):
                raise click.ClickException(f"{run.name}: {task} returned {outputs.shape[0]} results for "
                                           f"{len(paths)} images")
            yield paths, images, outputs
            bar.update(len(paths))


def image_task_command(task: str, name: str, inputs: tuple[str, ...], out: Path, grid: Path | None,
                       overwrite: bool, resize: bool, scale: int, device: str, batch_size: int,
                       no_progress: bool, as_json: bool) -> None:
    """``zoo TASK NAME IN... --out DIR``: one PNG per input into DIR, named after the input, and a grid."""
    import torch

    from zoo.images import expand_inputs, paired_rows, write_grid, write_png
    from zoo.tasks import TASKS

    run = start(name, (task,), device, batch_size, no_progress, as_json)
    if TASKS[task].output != "image":
        raise click.ClickException(f"task {task!r} gives a {TASKS[task].output} per image, not an image")
    paths = expand_inputs(list(inputs))
    targets = output_targets(paths, out)
    check_outputs([*targets, *([grid] if grid else [])], overwrite, paths)
    files = read_images(run, paths, resize)
    destination = dict(zip(paths, targets))
    out.mkdir(parents=True, exist_ok=True)
    shown: list[tuple[torch.Tensor, torch.Tensor]] = []
    output_shape = None
    for batch_paths, images, outputs in run_image_task(run, task, files):
        for path, output in zip(batch_paths, outputs):
            write_png(output, destination[path])
        output_shape = list(outputs.shape[1:])
        room = GRID_MAX - sum(len(x) for x, _ in shown)
        if grid is not None and room > 0:
            shown.append((images[:room], outputs[:room]))
    if grid is not None:
        inputs_shown = torch.cat([x for x, _ in shown])
        cols = min(GRID_COLS, len(inputs_shown))
        write_grid(paired_rows(inputs_shown, torch.cat([y for _, y in shown]), cols), grid, nrow=cols, scale=scale)
    message = f"{task}: wrote {len(paths)} PNG(s) to {out}" + (f" and the grid {grid}" if grid else "")
    run.report(message, {"task": task, "count": len(paths), "input_shape": list(run.model.input_shape),
                         "output_shape": output_shape, "out": str(out), "grid": str(grid) if grid else None,
                         "files": [{"input": str(p), "output": str(t)} for p, t in zip(paths, targets)]})


def run_table_task(task: str, name: str, inputs: tuple[str, ...], out: Path, overwrite: bool, resize: bool,
                   device: str, batch_size: int, no_progress: bool, as_json: bool) -> None:
    """An image -> vector or scalar task over IN..., its values written to --out as .npy (+ .txt), .json or .csv."""
    import torch

    from zoo.cli.tables import table_files, write_table
    from zoo.images import expand_inputs
    from zoo.tasks import TASKS

    table_files(out, [])  # a wrong --out suffix is refused before the model loads
    run = start(name, (task,), device, batch_size, no_progress, as_json)
    kind = TASKS[task].output
    if kind not in ("vector", "scalar"):
        raise click.ClickException(f"task {task!r} gives an {kind} per image; it has a command of its own")
    paths = expand_inputs(list(inputs))
    targets = table_files(out, paths)
    check_outputs(targets, overwrite, paths)
    files = read_images(run, paths, resize)
    rows = [outputs.reshape(len(batch), -1) for batch, _, outputs in run_image_task(run, task, files)]
    values = torch.cat(rows).numpy().astype("float32")
    if kind == "scalar":
        if values.shape[1] != 1:
            raise click.ClickException(f"{run.name}: {task} gave {values.shape[1]} numbers per image, not one")
        values, columns = values[:, 0], [task]
    else:
        columns = [f"z{i}" for i in range(values.shape[1])]
    out.parent.mkdir(parents=True, exist_ok=True)
    written = write_table(out, [str(p) for p in paths], values, columns, {"model": run.name, "task": task})
    run.report(f"{task}: wrote {values.shape[0]} x {len(columns)} values to {', '.join(map(str, written))}",
               {"task": task, "count": len(paths), "shape": list(values.shape), "columns": len(columns),
                "format": out.suffix.lower()[1:], "out": str(out),
                "files_list": str(targets[1]) if len(targets) > 1 else None})


# --------------------------------------------------------------------------------------------
# The commands


def _register_image_task(task: str, help_text: str) -> None:
    @main.command(task, help=f"{help_text}\n\nWrites DIR/<stem>.png for each input.\n\n{INPUTS_HELP}")
    @image_inputs
    @click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, metavar="DIR",
                  help="Folder for the output PNGs, one per input, named after it.")
    @click.option("--grid", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="PATH",
                  help=f"Also write a PNG grid to look at: a row of inputs above the row of their outputs, "
                       f"{GRID_COLS} to a row (the first {GRID_MAX} inputs).")
    @overwrite_option
    @scale_option(3)
    @model_options
    def command(grid, **options):
        image_task_command(task, grid=png_path(grid, "--grid"), **options)


for _task, _help in IMAGE_TASK_HELP.items():
    _register_image_task(_task, _help)


@main.command("encode", help="Encode images with model NAME: the latent code of each input, one row per input."
                              f"\n\n{INPUTS_HELP}")
@image_inputs
@table_output("codes.npy")
@model_options
def encode_command(**options):
    run_table_task("encode", **options)


@main.command("sample")
@click.argument("name", metavar="NAME|DIR")
@click.option("-n", "--n", "n", type=click.IntRange(1, 10000), default=64, show_default=True,
              help="How many images to draw.")
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=None,
              help="Seed of the random draw (default: a fresh one, printed so that the run can be repeated).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="PATH",
              help="The grid PNG of all the samples.")
@click.option("--each", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
              help="Also write each sample as its own PNG: DIR/sample-0000.png, sample-0001.png, ...")
@overwrite_option
@scale_option(3)
@model_options
def sample_command(name, n, seed, out, each, overwrite, scale, device, batch_size, no_progress, as_json):
    """Draw N new images from model NAME's prior into a grid (--out) and/or separate PNGs (--each).

    One generator, seeded with --seed on the model's device, draws the batches in
    turn: the same --seed, -n and --batch-size give the same images on the same
    device, and with N <= --batch-size they are the images `zoo predict` gets for
    {"task": "sample", "n": N, "seed": SEED}.
    """
    import torch

    from zoo.images import write_grid, write_png

    if out is None and each is None:
        raise click.UsageError("say where the samples go: --out grid.png and/or --each DIR")
    png_path(out, "--out")
    run = start(name, ("sample",), device, batch_size, no_progress, as_json)
    width = max(4, len(str(n - 1)))
    files = [each / f"sample-{i:0{width}d}.png" for i in range(n)] if each is not None else []
    check_outputs([*([out] if out else []), *files], overwrite)
    if seed is None:
        seed = int.from_bytes(os.urandom(8), "little") >> 1
    generator = torch.Generator(device=run.model.device).manual_seed(seed)
    if each is not None:
        each.mkdir(parents=True, exist_ok=True)
    kept, shape = [], None
    with run.bar(n, "sample") as bar:
        for first in range(0, n, batch_size):
            count = min(batch_size, n - first)
            batch = run.model.run_task("sample", count, generator=generator).detach().float().cpu()
            if batch.shape[0] != count:
                raise click.ClickException(f"{name}: sample returned {batch.shape[0]} images for n={count}")
            for image, path in zip(batch, files[first:first + count]):
                write_png(image, path)
            if out is not None:
                kept.append(batch)
            shape = [n, *batch.shape[1:]]
            bar.update(count)
    if out is not None:
        write_grid(torch.cat(kept), out, nrow=math.ceil(math.sqrt(n)), scale=scale)
    where = " and ".join(str(p) for p in (out, each) if p is not None)
    run.report(f"sample: {n} image(s) with seed {seed} to {where}",
               {"task": "sample", "n": n, "seed": seed, "shape": shape, "out": str(out) if out else None,
                "each": str(each) if each else None, "files": [str(p) for p in files]})


@main.command("interpolate")
@click.argument("name", metavar="NAME|DIR")
@click.argument("image_a", metavar="A", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("image_b", metavar="B", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--steps", type=click.IntRange(0, 1000), default=8, show_default=True,
              help="Images between the two ends.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, metavar="PATH",
              help="The strip PNG.")
@click.option("--resize", is_flag=True, help="Scale A and B to the model's size if they differ (as in reconstruct).")
@overwrite_option
@scale_option(3)
@model_options
def interpolate_command(name, image_a, image_b, steps, out, resize, overwrite, scale, device, batch_size,
                        no_progress, as_json):
    """A strip of decodings along the straight line from encode(A) to encode(B).

    The strip holds STEPS + 2 images: decode(encode(A)), the STEPS in between
    and decode(encode(B)). The model must declare encode and decode.
    """
    import torch

    from zoo.images import write_grid
    from zoo.latents import interpolation

    png_path(out, "--out")
    run = start(name, ("encode", "decode"), device, batch_size, no_progress, as_json)
    check_outputs([out], overwrite, [image_a, image_b])
    (_, images), = read_images(run, [image_a, image_b], resize).batches(2)
    codes = run.model.run_task("encode", images.to(run.model.device))
    line = interpolation(codes[0].flatten(), codes[1].flatten(), steps + 2).view(steps + 2, *codes.shape[1:])
    frames = torch.cat([run.model.run_task("decode", chunk).detach().float().cpu()
                        for chunk in line.split(batch_size)])
    write_grid(frames, out, nrow=len(frames), scale=scale)
    t = torch.linspace(0, 1, steps + 2).tolist()
    run.report(f"interpolate: {len(frames)} images from {image_a} to {image_b} in {out}",
               {"task": "interpolate", "a": str(image_a), "b": str(image_b), "steps": steps, "t": t,
                "shape": list(frames.shape), "out": str(out)})


@main.command("manifold")
@click.argument("name", metavar="NAME|DIR")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, metavar="PATH",
              help="The grid PNG.")
@click.option("--side", type=click.IntRange(2, 64), default=16, show_default=True,
              help="Images per row and per column.")
@overwrite_option
@scale_option(2)
@model_options
def manifold_command(name, out, side, overwrite, scale, device, batch_size, no_progress, as_json):
    """A SIDE x SIDE grid of decodings over a 2-D latent plane: the prior's quantiles.

    Latent (z0, z1) runs over the standard normal's quantiles 0.03 to 0.97:
    z0 rises left to right, z1 falls top to bottom. The model must declare
    decode and have latent_dim 2.
    """
    import torch

    from zoo.images import write_grid
    from zoo.latents import MANIFOLD_QUANTILES, manifold_codes

    png_path(out, "--out")
    run = start(name, ("decode",), device, batch_size, no_progress, as_json)
    latent_dim = run.model.latent_dim
    if latent_dim != 2:
        has = "has no latent space" if latent_dim is None else f"has latent_dim {latent_dim}"
        raise click.ClickException(f"{name}: a manifold needs a 2-D latent space, but the model {has}; "
                                   "see `zoo interpolate` or `zoo sample` instead")
    check_outputs([out], overwrite)
    codes = manifold_codes(side).to(run.model.device)
    with run.bar(len(codes), "manifold") as bar:
        images = []
        for chunk in codes.split(batch_size):
            images.append(run.model.run_task("decode", chunk).detach().float().cpu())
            bar.update(len(chunk))
    images = torch.cat(images)
    write_grid(images, out, nrow=side, scale=scale)
    run.report(f"manifold: {side}x{side} decodings in {out}",
               {"task": "manifold", "side": side, "quantiles": list(MANIFOLD_QUANTILES), "shape": list(images.shape),
                "out": str(out)})
